"""Training pieces: warm-up schedule, EMA, checkpoints, metrics files, DSM loss, prior training and resume,
and a data-parallel step on 8 fake CPU devices matching the 1-device step."""
import glob
import json
import math
import os
import subprocess
import sys

import jax
import matplotlib.pyplot as plt
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from apd.data import Dataset
from apd.priors import GaussianPrior, eps_from_score
from apd.sde import VPSDE
from apd.training.checkpoint import Checkpointer, load_config, save_config
from apd.training.metrics_log import MetricsWriter, read_metrics
from apd.optim import ema_update, learning_rate_schedule, make_optimizer
from apd.nets import make_score_net
from apd.training.prior import dsm_loss, load_prior, prior_exists, sample_times, train_prior, validation_loss_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _opt_cfg(lr=1e-2, warmup_steps=10, grad_clip=1.0):
    return ml_collections.ConfigDict(dict(lr=lr, warmup_steps=warmup_steps, grad_clip=grad_clip))


def test_warmup_schedule_values():
    schedule = learning_rate_schedule(_opt_cfg())
    assert [float(schedule(s)) for s in (0, 5, 10, 11, 1000)] == pytest.approx([0.0, 5e-3, 1e-2, 1e-2, 1e-2])
    assert float(learning_rate_schedule(_opt_cfg(warmup_steps=0))(0)) == pytest.approx(1e-2)


def test_cosine_decay_after_warmup():
    cfg = _opt_cfg()
    cfg.num_steps, cfg.cosine_decay = 110, True
    schedule = learning_rate_schedule(cfg)
    assert [float(schedule(s)) for s in (0, 5, 10, 60, 110, 500)] == pytest.approx([0.0, 5e-3, 1e-2, 5e-3, 0.0, 0.0], abs=1e-9)


def test_optimizer_steps_follow_schedule():
    # A constant gradient makes every Adam direction exactly 1 (up to eps), so the parameter moves by -lr(k).
    cfg = _opt_cfg()
    tx = make_optimizer(cfg)
    params = jnp.zeros(3)
    state = tx.init(params)
    grad = jnp.array([30.0, 0.0, 40.0])  # norm 50 > grad_clip: clipped, same direction
    for _ in range(12):
        updates, state = tx.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    moved = sum(float(learning_rate_schedule(cfg)(k)) for k in range(12))  # 0.045 + 0.02 = 0.065
    np.testing.assert_allclose(params, [-moved, 0.0, -moved], rtol=1e-5)
    assert moved == pytest.approx(0.065)


def test_optimizer_rejects_bad_clip():
    with pytest.raises(ValueError, match="grad_clip"):
        make_optimizer(_opt_cfg(grad_clip=0.0))


def test_ema_update_pinned():
    out = ema_update({"a": jnp.array(1.0), "b": jnp.array([2.0, 4.0])}, {"a": jnp.array(3.0), "b": jnp.zeros(2)}, 0.9)
    assert float(out["a"]) == pytest.approx(1.2)
    np.testing.assert_allclose(out["b"], [1.8, 3.6], rtol=1e-6)


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _state(seed):
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.arange(2.0) + seed},
        "step": jnp.asarray(seed, jnp.int32),
        "rng": jax.random.PRNGKey(seed),
    }


def test_checkpoint_round_trip_and_keep(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore(_state(0))
    for step in (1, 2, 3):
        ckpt.save(step, _state(step))
    assert ckpt.all_steps() == [2, 3]
    assert ckpt.latest_step() == 3
    latest = ckpt.restore(_state(0))
    older = ckpt.restore(jax.eval_shape(lambda: _state(0)), step=2)
    ckpt.close()
    for restored, expected in ((latest, _state(3)), (older, _state(2))):
        _assert_trees_equal(restored, expected)
        assert restored["rng"].dtype == jnp.uint32


def test_config_round_trip(tmp_path):
    cfg = ml_collections.ConfigDict({"seed": 3, "prior": {"model": {"name": "mlp", "channel_mult": (1, 2)}}})
    save_config(str(tmp_path), cfg)
    loaded = load_config(str(tmp_path))
    assert loaded.seed == 3 and loaded.prior.model.name == "mlp" and list(loaded.prior.model.channel_mult) == [1, 2]
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_config(str(tmp_path / "missing"))


def test_metrics_writer(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(5, {"loss": jnp.array(0.25), "lr": 1e-3})
    writer.write(10, {"loss": 0.125})
    with pytest.raises(ValueError, match="reserved"):
        writer.write(11, {"step": 1.0})
    writer.close()
    assert read_metrics(str(tmp_path)) == [{"step": 5, "loss": 0.25, "lr": 1e-3}, {"step": 10, "loss": 0.125}]
    events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert len(events) == 1 and os.path.getsize(events[0]) > 0


def _gaussian_prior():
    lam = np.array([0.5, 0.05])
    return GaussianPrior.create(mean=[0.3, 0.7], cov=np.diag(lam), sde=VPSDE()), lam


def _optimal_loss(sde, lam, t):
    """Per-entry DSM loss of the exact eps at times t (T,): mean_i a^2 lam_i / (a^2 lam_i + s^2)."""
    a2, s2 = np.asarray(sde.alpha(t))[:, None] ** 2, np.asarray(sde.sigma(t))[:, None] ** 2
    return np.mean(a2 * lam / (a2 * lam + s2), axis=1)


@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_dsm_loss_of_exact_score_matches_closed_form(likelihood_weighting):
    prior, lam = _gaussian_prior()
    sde, n = prior.sde, 200_000
    k_x, k_t, k_e = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = prior.sample(k_x, n)
    t = sample_times(sde, k_t, n, likelihood_weighting)
    noise = jax.random.normal(k_e, x0.shape)
    loss = float(dsm_loss(lambda x, s: eps_from_score(prior, x, s), sde, x0, t, noise))
    # E_t of the closed form over the time density, by quadrature on a log grid.
    grid = np.geomspace(sde.t_min, 1.0, 200_001)
    if likelihood_weighting:
        density = np.asarray(sde.importance_density(grid))
    else:
        density = np.full_like(grid, 1 / (1 - sde.t_min))
    expected = np.trapezoid(density * _optimal_loss(sde, lam, grid), grid)
    # Each residual entry is N(0, v) with v <= 1, so its square has variance <= 2: 4 standard errors.
    assert abs(loss - expected) < 4 * math.sqrt(2.0 / (2 * n))


def test_dsm_loss_of_zero_net_is_noise_power():
    sde = VPSDE()
    noise = jnp.array([[1.0, -2.0], [0.5, 0.0]])
    loss = dsm_loss(lambda x, t: jnp.zeros_like(x), sde, jnp.ones((2, 2)), jnp.array([0.1, 0.9]), noise)
    assert float(loss) == pytest.approx((1 + 4 + 0.25) / 4)


def _fake_dataset():
    rng = np.random.default_rng(0)
    train = rng.uniform(size=(64, 2, 2, 1)).astype(np.float32)
    val = rng.uniform(size=(8, 2, 2, 1)).astype(np.float32)
    return Dataset(name="fake", train=train, val=val, test=val, signal_shape=(2, 2, 1), kind="image", split={})


def _prior_config(num_steps):
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "data": {"name": "fake"},
            "prior": {
                "sde": {"beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3},
                "model": {"name": "mlp", "width": 16, "num_blocks": 1},
                "training": {
                    "batch_size": 8,
                    "num_steps": num_steps,
                    "lr": 1e-3,
                    "warmup_steps": 5,
                    "grad_clip": 1.0,
                    "ema_decay": 0.9,
                    "likelihood_weighting": True,
                    "log_every": 5,
                    "ckpt_every": 10,
                    "keep_checkpoints": 2,
                    "num_samples": 4,
                    "sample_steps": 5,
                },
            },
        }
    )


def test_train_prior_logs_checkpoints_and_resumes(tmp_path):
    workdir, dataset = str(tmp_path), _fake_dataset()
    assert not prior_exists(workdir)
    train_prior(_prior_config(20), workdir, dataset)
    assert prior_exists(workdir)
    ckpt_dir = os.path.join(workdir, "prior", "checkpoints")
    ckpt = Checkpointer(ckpt_dir, keep=2)
    assert ckpt.all_steps() == [10, 20]
    ckpt.close()
    logged = read_metrics(os.path.join(workdir, "prior"))
    assert [m["step"] for m in logged] == [5, 10, 15, 20]
    assert logged[0]["lr"] == pytest.approx(0.8e-3) and logged[-1]["lr"] == pytest.approx(1e-3)
    assert all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in logged)
    # at each checkpoint the EMA parameters' DSM loss on the validation signals, with draws fixed by the seed
    assert [m["step"] for m in logged if "val_dsm" in m] == [10, 20]
    sde, module = VPSDE(), make_score_net(_prior_config(20).prior.model, (2, 2, 1))
    expected = validation_loss_fn(module, sde, dataset.val, jax.random.PRNGKey(0), batch=3)(load_prior(workdir).params)
    assert logged[-1]["val_dsm"] == pytest.approx(expected, rel=1e-5)
    figure = plt.imread(os.path.join(workdir, "prior", "samples.png"))
    assert figure.shape[:2] == (200, 500)  # 2 rows (data, samples) x (label + 4 columns) of 100 px
    with open(os.path.join(workdir, "prior", "config.json")) as f:
        assert json.load(f)["prior"]["signal_shape"] == [2, 2, 1]

    prior = train_prior(_prior_config(30), workdir, dataset)  # resumes at step 20
    logged = read_metrics(os.path.join(workdir, "prior"))
    assert [m["step"] for m in logged] == [5, 10, 15, 20, 25, 30]
    ckpt = Checkpointer(ckpt_dir, keep=2)
    assert ckpt.all_steps() == [20, 30]
    ckpt.close()

    again = train_prior(_prior_config(30), workdir, dataset)  # finished: only loads
    assert len(read_metrics(os.path.join(workdir, "prior"))) == 6
    loaded = load_prior(workdir)
    assert loaded.signal_shape == (2, 2, 1) and loaded.sde == VPSDE()
    for other in (again, loaded):
        _assert_trees_equal(other.params, prior.params)
    x, t = jnp.full((3, 2, 2, 1), 0.5), jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(loaded.score(x, t), prior.score(x, t))


_SHARDED_STEP = """
import json
import jax, jax.numpy as jnp, ml_collections, numpy as np
from jax.sharding import Mesh
from apd.nets import make_score_net
from apd.sde import VPSDE
from apd.optim import make_optimizer
from apd.training.prior import init_prior_state, make_train_step
from apd.training.sharding import data_mesh, replicate, replicated, shard_batch

cfg = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, grad_clip=1.0, ema_decay=0.9, likelihood_weighting=True))
module = make_score_net(ml_collections.ConfigDict(dict(name="mlp", width=16, num_blocks=1)), (3, 1))
tx = make_optimizer(cfg)
state = init_prior_state(module, tx, (3, 1), jax.random.PRNGKey(0))
batch = np.random.default_rng(0).uniform(size=(16, 3, 1)).astype(np.float32)
step = make_train_step(module, VPSDE(), tx, cfg, dropout=False)

def run(mesh):
    new, metrics = jax.jit(step, out_shardings=replicated(mesh))(replicate(mesh, state), shard_batch(mesh, batch))
    return float(metrics["loss"]), np.concatenate([np.ravel(p) for p in jax.tree.leaves(new["params"])])

mesh8 = data_mesh()
loss8, params8 = run(mesh8)
loss1, params1 = run(Mesh(np.array(jax.devices()[:1]), ("data",)))
try:
    shard_batch(mesh8, batch[:6])
    error = ""
except ValueError as err:
    error = str(err)
print(json.dumps(dict(devices=mesh8.size, shards=len(shard_batch(mesh8, batch).addressable_shards), loss8=loss8,
                      loss1=loss1, max_param_diff=float(np.abs(params8 - params1).max()), error=error)))
"""


def test_data_parallel_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _SHARDED_STEP], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["shards"] == 8
    assert abs(result["loss8"] - result["loss1"]) < 1e-5
    assert result["max_param_diff"] < 1e-5
    assert "batch size 6" in result["error"] and "8 devices" in result["error"]


def test_output_fit_from_prior_samples_is_the_wiener_filter():
    """fit_output='prior': pairs from an exact Gaussian prior (variance v per entry, no training signal), denoising
    at s: the fitted gain is v / (v + s^2) and the shift (1 - gain) * mean, within the error of 512 pairs."""
    from apd import flows
    from apd.operators import make_operator_family
    from apd.training.flow import output_fit_pairs

    variance = np.array([0.01, 0.04, 0.09, 0.16])
    prior = GaussianPrior.create(np.full(4, 0.5), np.diag(variance), signal_shape=(4, 1))
    family = make_operator_family(ml_collections.ConfigDict(dict(name="denoise", noise_std=0.2)), (4, 1))
    untouched = np.zeros((0, 4, 1))  # clean signals are not needed: an empty training set
    x, estimate = output_fit_pairs("prior", 0, family, prior, untouched)
    assert x.shape == estimate.shape == (512, 4, 1)
    params = {"estimate_gain": jnp.ones(4), "out_shift": jnp.zeros(4), "out_log_scale": jnp.zeros(4)}
    fitted = flows.fit_output(params, x, estimate)
    gain = variance / (variance + 0.04)
    np.testing.assert_allclose(fitted["estimate_gain"], gain, atol=0.06)
    np.testing.assert_allclose(fitted["out_shift"], 0.5 * (1 - gain), atol=0.04)
    np.testing.assert_allclose(np.exp(fitted["out_log_scale"]), np.sqrt(gain * 0.04), rtol=0.12)  # posterior std
    assert output_fit_pairs("none", 0, family, prior, untouched) is None
    with pytest.raises(ValueError, match="fit_output must be one of"):
        output_fit_pairs("clean", 0, family, prior, untouched)


def test_output_fit_prior_samples_are_kept_per_prior(tmp_path):
    """With a cache folder the output fit's prior samples are drawn once per (seed, count, prior parameters): a
    second call reads the file (the same pairs), and a prior with other parameters gets its own file."""
    from apd.operators import make_operator_family
    from apd.training.flow import output_fit_pairs

    family = make_operator_family(ml_collections.ConfigDict(dict(name="denoise", noise_std=0.2)), (4, 1))
    prior = GaussianPrior.create(np.full(4, 0.5), np.diag([0.01, 0.04, 0.09, 0.16]), signal_shape=(4, 1))
    x, estimate = output_fit_pairs("prior", 0, family, prior, None, num_pairs=8, cache_dir=str(tmp_path))
    (saved,) = tmp_path.glob("fit_output_samples_seed0_n8_*.npy")
    np.testing.assert_array_equal(np.load(saved), x)
    np.save(saved, np.full((8, 4, 1), 0.25, np.float32))  # the file, not a new draw, is what a second call uses
    x_again, _ = output_fit_pairs("prior", 0, family, prior, None, num_pairs=8, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(x_again, 0.25)
    other = GaussianPrior.create(np.full(4, 0.3), np.diag([0.01, 0.04, 0.09, 0.16]), signal_shape=(4, 1))
    output_fit_pairs("prior", 0, family, other, None, num_pairs=8, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("fit_output_samples_seed0_n8_*.npy"))) == 2


def test_prior_training_signals_are_drawn_once_and_kept(tmp_path):
    from apd.training.flow import prior_training_signals

    prior, lam = _gaussian_prior()
    path = str(tmp_path / "prior_signals.npy")
    signals = prior_training_signals(0, prior, 600, path)  # two chunks of the sampler
    assert signals.shape == (600, 2) and signals.dtype == np.float32
    tolerance = 4 * np.sqrt(lam / 600)
    assert np.all(np.abs(signals.mean(axis=0) - [0.3, 0.7]) < tolerance)
    assert len(np.unique(signals[:, 0])) == 600  # the chunks use different keys
    np.save(path, signals + 1.0)  # a resumed run reads the file instead of sampling again
    np.testing.assert_array_equal(prior_training_signals(0, prior, 600, path), signals + 1.0)


def test_forward_kl_warm_start_then_apd():
    """forward_kl_steps = 2: the first two updates minimise -log q(x|y) (the loss equals forward_kl_loss at the
    parameters of that step), the third is the APD loss, whose data-weight ramp starts after the warm start."""
    from apd import flows
    from apd.objective import apd_loss, apd_terms, forward_kl_loss
    from apd.operators import Denoise, broadcast_operator
    from apd.optim import init_train_state
    from apd.training.flow import make_update

    prior = GaussianPrior.create(np.full(4, 0.5), np.diag([0.01, 0.04, 0.09, 0.16]), signal_shape=(4, 1))
    cfg = ml_collections.ConfigDict(dict(num_z=2, elbo_draws=1, ema_decay=0.9, anneal_steps=10, forward_kl_steps=2,
                                         lr=1e-3, warmup_steps=0, grad_clip=1.0, cosine_decay=False, num_steps=3))
    flow = flows.ConditionalRealNVP((4, 1), num_couplings=2, width=8)
    ops = broadcast_operator(Denoise(0.2, (4, 1)), 8)
    x = prior.sample(jax.random.PRNGKey(0), 8)
    y = jax.vmap(lambda o, k, xx: o.measure(k, xx))(ops, jax.random.split(jax.random.PRNGKey(1), 8), x)
    tx = make_optimizer(cfg)
    params = flow.init(jax.random.PRNGKey(2), jnp.zeros((1, 4, 1)), jnp.zeros((1, 4, 1)))["params"]
    state = init_train_state(params, tx, jax.random.PRNGKey(3))
    update = jax.jit(make_update(flow, tx, cfg))
    for step in range(3):
        before = state["params"]
        key = jax.random.split(state["rng"])[1]
        state, metrics = update(state, prior, ops, y, x)
        if step < 2:
            expected = forward_kl_loss(flow, before, ops, y, x)
            assert float(metrics["fidelity"]) == 0.0  # APD terms not computed in the warm start
        else:
            expected = apd_loss(apd_terms(flow, before, prior, ops, y, key, num_z=2), 0.0)  # ramp at 0 after it
            assert float(metrics["data_weight"]) == 0.0
        assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5, abs=1e-4)


def test_data_signals_false_trains_on_prior_samples_alone(tmp_path):
    """flow.training.data_signals=False: every training batch holds prior samples only (near the prior's mean
    [0.3, 0.7]), never the clean training signals (all 5.0 here)."""
    from configs import defaults
    from apd import flows
    from apd.operators import make_operator_family
    from apd.training.flow import _signal_batches, flow_dir
    from apd.training.sharding import data_mesh

    prior = GaussianPrior.create(mean=[0.3, 0.7], cov=np.diag([0.5, 0.05]), signal_shape=(2, 1))
    train = np.full((40, 2, 1), 5.0, np.float32)
    dataset = Dataset("toy", train, np.zeros((4, 2, 1), np.float32), np.zeros((0, 2, 1), np.float32), (2, 1), "image", {})
    config = ml_collections.ConfigDict(dict(seed=0, operator=dict(name="denoise", noise_std=0.1), flow=dict(
        model=defaults.realnvp(num_couplings=2, width=8),
        training=defaults.flow_training(batch_size=16, prior_signals=64, data_signals=False, fresh_noise=True))))
    flow = flows.make_flow(config.flow.model, (2, 1))
    family = make_operator_family(config.operator, (2, 1))
    os.makedirs(flow_dir(str(tmp_path)))
    batch, _ = _signal_batches(config, flow, family, data_mesh(), prior, dataset, str(tmp_path))
    seen = np.concatenate([np.asarray(batch(step)[1]) for step in range(8)])
    assert seen.shape == (128, 2, 1) and np.abs(seen).max() < 4.0
    config.flow.training.data_signals = True
    batch, _ = _signal_batches(config, flow, family, data_mesh(), prior, dataset, str(tmp_path))
    assert np.any(np.concatenate([np.asarray(batch(step)[1]) for step in range(8)]) == 5.0)
