"""Runs that survive: non-finite steps skipped and counted, a stop after too many, resume bit for bit (prior and
flow), config changes on resume refused or recorded, unreadable checkpoints named, and one line for every bad
input on the command line."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from apd.data import Dataset
from apd.nets import make_score_net
from apd.optim import all_finite, apply_gradients, init_train_state, make_optimizer
from apd.priors import GaussianPrior
from apd.sde import VPSDE
from apd.training.checkpoint import Checkpointer
from apd.training.loop import TrainingStopped, run_steps
from apd.training.metrics_log import read_metrics
from apd.training.prior import init_prior_state, make_train_step, train_prior
from configs import defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _dataset(nan=False):
    rng = np.random.default_rng(0)
    train = rng.uniform(size=(64, 2, 2, 1)).astype(np.float32)
    if nan:
        train[:] = np.nan
    val = rng.uniform(size=(8, 2, 2, 1)).astype(np.float32)
    return Dataset(name="fake", train=train, val=val, test=val, signal_shape=(2, 2, 1), kind="image", split={})


def _training(**overrides):
    values = dict(batch_size=8, num_steps=20, lr=1e-3, warmup_steps=5, grad_clip=1.0, ema_decay=0.9, log_every=5,
                  ckpt_every=10, keep_checkpoints=3, max_bad_steps=10)
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def _prior_config(**training):
    sizes = dict(batch_size=8, num_steps=20, warmup_steps=5, log_every=5, ckpt_every=10, num_samples=2, sample_steps=2)
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "data": {"name": "fake"},
            "prior": {
                "sde": defaults.sde(),
                "model": {"name": "mlp", "width": 16, "num_blocks": 1},
                "training": defaults.prior_training(**{**sizes, **training}),
            },
        }
    )


# ---------------------------------------------------------------- non-finite values


def test_all_finite():
    assert bool(all_finite(jnp.ones(2), {"a": jnp.zeros((2, 2))}))
    assert not bool(all_finite(jnp.ones(2), {"a": jnp.array([0.0, jnp.inf])}))
    assert not bool(all_finite(jnp.array(jnp.nan), {"a": jnp.zeros(2)}))


def test_prior_step_on_a_nan_batch_leaves_the_parameters_alone():
    cfg = _prior_config().prior
    module = make_score_net(cfg.model, (2, 2, 1))
    tx = make_optimizer(cfg.training)
    step = jax.jit(make_train_step(module, VPSDE(), tx, cfg.training, dropout=False))
    state = init_prior_state(module, tx, (2, 2, 1), jax.random.PRNGKey(0))
    good = jnp.asarray(_dataset().train[:8])
    state, metrics = step(state, good)
    assert float(metrics["skipped"]) == 0.0
    bad = good.at[3, 0, 1, 0].set(jnp.nan)
    after, metrics = step(state, bad)
    assert float(metrics["skipped"]) == 1.0 and np.isnan(float(metrics["loss"]))
    for key in ("params", "ema_params", "opt_state"):
        _assert_trees_equal(after[key], state[key])
    assert int(after["step"]) == 2 and not np.array_equal(after["rng"], state["rng"])
    again, metrics = step(after, good)  # a good step afterwards moves on from the last good parameters
    assert float(metrics["skipped"]) == 0.0 and all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(again))


def test_flow_step_on_a_nan_batch_leaves_the_parameters_alone():
    from apd import flows
    from apd.measurements import split_key
    from apd.operators import make_operator_family
    from apd.training.flow import init_flow_state, make_train_step as make_flow_step

    prior = GaussianPrior.create(np.full(4, 0.5), 0.05 * np.eye(4), signal_shape=(2, 2, 1))
    family = make_operator_family(ml_collections.ConfigDict(dict(name="denoise", noise_std=0.2)), (2, 2, 1))
    flow = flows.make_flow(ml_collections.ConfigDict(dict(name="realnvp", num_couplings=2, width=8, depth=1,
                                                          scale_bound=2.0, linear_shift=True)), (2, 2, 1))
    cfg = _training(num_z=1, elbo_draws=1, warmup_steps=0)
    tx = make_optimizer(cfg)
    state = init_flow_state(flow, family, tx, jax.random.PRNGKey(0))
    step = jax.jit(make_flow_step(flow, family, tx, cfg, split_key(0, "train")))
    x, index = jnp.asarray(_dataset().train[:4]), jnp.arange(4)
    after, metrics = step(state, prior, x.at[0].set(jnp.inf), index)
    assert float(metrics["skipped"]) == 1.0
    for key in ("params", "ema_params", "opt_state"):
        _assert_trees_equal(after[key], state[key])
    moved, metrics = step(after, prior, x, index)
    assert float(metrics["skipped"]) == 0.0
    assert not np.array_equal(moved["params"]["out_shift"], state["params"]["out_shift"])


def _quadratic_run(tmp_path, nan_steps, **overrides):
    """run_steps on loss 0.5 ||w - x||^2 with batches x that are NaN at nan_steps."""
    cfg = _training(**overrides)
    tx = make_optimizer(cfg)

    def step_fn(state, x):
        loss, grads = jax.value_and_grad(lambda w: 0.5 * jnp.sum((w - x) ** 2))(state["params"])
        finite = all_finite(loss, grads)
        new = apply_gradients(state, grads, tx, cfg.ema_decay, state["rng"], finite)
        return new, {"loss": loss, "skipped": jnp.logical_not(finite).astype(jnp.float32)}

    def batch_fn(step):
        return (jnp.full(3, jnp.nan if step in nan_steps else 1.0),)

    state = init_train_state(jnp.zeros(3), tx, jax.random.PRNGKey(0))
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), 3)
    return run_steps(state, jax.jit(step_fn), batch_fn, cfg, checkpointer, str(tmp_path), "quadratic"), checkpointer


def test_skipped_steps_are_counted_and_the_loss_averages_good_steps(tmp_path):
    state, _ = _quadratic_run(tmp_path, nan_steps={2, 3, 12}, num_steps=15)
    logged = read_metrics(str(tmp_path))
    assert [(m["step"], m["skipped_steps"]) for m in logged] == [(5, 2.0), (10, 0.0), (15, 1.0)]
    assert np.isfinite([m["loss"] for m in logged]).all() and logged[0]["loss"] == pytest.approx(1.5, rel=1e-3)
    assert int(state["step"]) == 15 and bool(jnp.all(jnp.isfinite(state["params"])))


def test_run_stops_after_max_bad_steps_with_the_last_checkpoint_intact(tmp_path):
    with pytest.raises(TrainingStopped) as err:
        _quadratic_run(tmp_path, nan_steps=set(range(13, 100)), num_steps=40, max_bad_steps=4)
    message = str(err.value)
    assert message.startswith("quadratic: 4 consecutive steps (14 to 17) had a non-finite loss or gradient and were "
                              "skipped (training.max_bad_steps = 4); stopped: the last checkpoint, step 10, is intact")
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), 3)
    assert checkpointer.all_steps() == [10]
    saved = checkpointer.restore(init_train_state(jnp.zeros(3), make_optimizer(_training()), jax.random.PRNGKey(0)))
    checkpointer.close()
    assert int(saved["step"]) == 10 and bool(jnp.all(jnp.isfinite(saved["params"])))
    assert [(m["step"], m["skipped_steps"]) for m in read_metrics(str(tmp_path))] == [(5, 0.0), (10, 0.0), (15, 2.0)]


def test_prior_training_on_nan_data_stops(tmp_path):
    with pytest.raises(TrainingStopped, match="prior: 3 consecutive steps .1 to 3. had a non-finite loss"):
        train_prior(_prior_config(max_bad_steps=3), str(tmp_path), _dataset(nan=True))
    assert not os.path.exists(tmp_path / "prior" / "checkpoints" / "3")


# ---------------------------------------------------------------- kill and resume, bit for bit


def _interrupt_at(monkeypatch, module, at_step):
    """Make module's batch_indices raise at step `at_step`, as a kill after the checkpoint before it."""
    real = module.batch_indices

    def batch_indices(n, seed, stream, step, batch_size):
        if step == at_step:
            raise KeyboardInterrupt(f"killed at step {step}")
        return real(n, seed, stream, step, batch_size)

    monkeypatch.setattr(module, "batch_indices", batch_indices)


def _checkpoint_state(run_dir, template):
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"), 3)
    state = checkpointer.restore(template)
    checkpointer.close()
    return state


@pytest.fixture(scope="module")
def straight_prior(tmp_path_factory):
    """A prior trained 20 steps without a break (checkpoints 10 and 20)."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    train_prior(_prior_config(), workdir, _dataset())
    return workdir


def _prior_template():
    cfg = _prior_config().prior
    module = make_score_net(cfg.model, (2, 2, 1))
    return init_prior_state(module, make_optimizer(cfg.training), (2, 2, 1), jax.random.PRNGKey(0))


def test_prior_killed_and_resumed_ends_bit_for_bit(straight_prior, tmp_path, monkeypatch):
    import apd.training.prior as prior_module

    workdir = str(tmp_path)
    _interrupt_at(monkeypatch, prior_module, 13)
    with pytest.raises(KeyboardInterrupt):
        train_prior(_prior_config(), workdir, _dataset())
    monkeypatch.undo()
    assert [m["step"] for m in read_metrics(os.path.join(workdir, "prior"))] == [5, 10]
    train_prior(_prior_config(), workdir, _dataset())  # the same command again: resumes at 10
    template = _prior_template()
    resumed = _checkpoint_state(os.path.join(workdir, "prior"), template)
    straight = _checkpoint_state(os.path.join(straight_prior, "prior"), template)
    assert int(resumed["step"]) == 20
    _assert_trees_equal(resumed, straight)
    assert [m["step"] for m in read_metrics(os.path.join(workdir, "prior"))] == [5, 10, 15, 20]


def _flow_config(**training):
    sizes = dict(batch_size=8, num_z=1, num_steps=12, warmup_steps=2, log_every=3, eval_every=3, ckpt_every=6,
                 eval_num_measurements=0)
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "data": {"name": "fake"},
            "operator": {"name": "denoise", "noise_std": 0.2},
            "flow": {
                "model": defaults.realnvp(num_couplings=2, width=8, depth=1),
                "training": defaults.flow_training(**{**sizes, **training}),
            },
        }
    )


def test_flow_killed_and_resumed_ends_bit_for_bit(tmp_path, monkeypatch):
    import apd.training.flow as flow_module
    from apd.training.flow import train_flow

    prior = GaussianPrior.create(np.full(4, 0.5), 0.05 * np.eye(4), signal_shape=(2, 2, 1))
    straight_dir, killed_dir = str(tmp_path / "straight"), str(tmp_path / "killed")
    _, straight = train_flow(_flow_config(), straight_dir, prior, _dataset())
    _interrupt_at(monkeypatch, flow_module, 8)
    with pytest.raises(KeyboardInterrupt):
        train_flow(_flow_config(), killed_dir, prior, _dataset())
    monkeypatch.undo()
    _, resumed = train_flow(_flow_config(), killed_dir, prior, _dataset())
    _assert_trees_equal(resumed, straight)
    straight_raw = flow_module.load_flow(straight_dir)
    resumed_raw = flow_module.load_flow(killed_dir)
    assert resumed_raw[3] == straight_raw[3] == 12


def test_wiener_flow_keeps_its_gaussian_fit_for_the_sampler(tmp_path):
    """A flow with the 'wiener' estimate saves the fit it trained with (from its output fit's prior samples) and
    load_sampler conditions on exactly that fit: the loaded flow sees the estimate it was trained on."""
    from apd.objective import wiener_estimate
    from apd.sampler import load_sampler
    from apd.training.flow import WIENER_FILE, flow_dir, task_estimate, train_flow

    prior = GaussianPrior.create(np.full(4, 0.5), 0.05 * np.eye(4), signal_shape=(2, 2, 1))
    config = _flow_config(num_steps=3, log_every=3, eval_every=3, ckpt_every=3)
    config.operator = ml_collections.ConfigDict(dict(name="deblur", noise_std=0.05, kernel_size=3, width=1.0))
    config.flow.model.estimate = "wiener"
    workdir = str(tmp_path)
    train_flow(config, workdir, prior, _dataset())
    with np.load(os.path.join(flow_dir(workdir), WIENER_FILE)) as saved:
        saved_rho = float(saved["rho"])
    sampler = load_sampler(workdir)
    fitted, record = task_estimate(config, sampler.family, prior, cache_dir=os.path.join(workdir, "prior"))
    assert saved_rho == record["rho"]
    np.testing.assert_array_equal(np.asarray(sampler.estimate.mean), np.asarray(fitted.mean))
    np.testing.assert_array_equal(np.asarray(sampler.estimate.gain), np.asarray(fitted.gain))
    np.testing.assert_allclose(np.asarray(fitted.mean).ravel(), 0.5, atol=0.05)  # 512 samples of N(0.5, 0.05 I)
    y = jnp.linspace(0.2, 0.8, 4).reshape(1, 2, 2, 1)
    op = sampler.family.draw(jax.random.PRNGKey(0))
    np.testing.assert_allclose(sampler.condition(y).estimate[0], wiener_estimate(op, y[0], fitted.mean, fitted.gain),
                               atol=1e-6)


# ---------------------------------------------------------------- config changes on resume


def test_resume_with_changed_settings_is_refused_before_any_work(straight_prior, tmp_path):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(straight_prior, workdir)
    record = os.path.join(workdir, "prior", "config.json")
    before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(workdir) for p in files}
    config = _prior_config(num_steps=30)
    config.prior.model.width = 32
    config.seed = 1
    with pytest.raises(ValueError) as err:
        train_prior(config, workdir, _dataset())
    assert str(err.value).startswith(f"the config differs from the one {workdir}/prior was trained with: "
                                     "prior.model.width 16 -> 32, seed 0 -> 1; these change what is trained")
    after = {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(workdir) for p in files}
    assert after == before

    with open(record) as f:
        original = f.read()
    train_prior(_prior_config(num_steps=30, log_every=10), workdir, _dataset())  # safe changes: resumes at 20
    train_prior(_prior_config(num_steps=30, log_every=10), workdir, _dataset())  # finished: nothing new recorded
    with open(record) as f:
        assert f.read() == original
    with open(os.path.join(workdir, "prior", "config_history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert len(history) == 1 and history[0]["step"] == 20
    assert history[0]["changes"] == {"prior.training.log_every": [5, 10], "prior.training.num_steps": [20, 30]}
    config = _prior_config(num_steps=40, log_every=10)
    config.prior.training.lr = 1e-2
    with pytest.raises(ValueError, match=r"prior.training.lr 0.0002 -> 0.01; these change"):
        train_prior(config, workdir, _dataset())


# ---------------------------------------------------------------- damaged checkpoints


def _truncate_data_files(folder):
    """Cut every array data file (orbax's .../d/<hash>) of a checkpoint folder to half its size."""
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) if os.path.basename(d) == "d" for f in names]
    assert files
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def test_damaged_latest_checkpoint_is_named_and_resumed_from_only_on_request(straight_prior, tmp_path):
    import shutil

    from apd.training.checkpoint import CheckpointError

    workdir = str(tmp_path / "run")
    shutil.copytree(straight_prior, workdir)
    ckpt_dir = os.path.join(workdir, "prior", "checkpoints")
    _truncate_data_files(os.path.join(ckpt_dir, "20"))
    # a save killed half way leaves only orbax's temporary folder, which is ignored
    shutil.copytree(os.path.join(ckpt_dir, "10"), os.path.join(ckpt_dir, "30.orbax-checkpoint-tmp-1764662400"))
    with pytest.raises(CheckpointError) as err:
        train_prior(_prior_config(num_steps=30), workdir, _dataset())
    message = str(err.value)
    assert message.startswith(f"checkpoint 20 in {ckpt_dir} is unreadable (") and "\n" not in message
    assert message.endswith("; the newest intact one is step 10") and (err.value.step, err.value.intact) == (20, 10)
    train_prior(_prior_config(), workdir, _dataset(), resume_from=10)
    template = _prior_template()
    _assert_trees_equal(_checkpoint_state(os.path.join(workdir, "prior"), template),
                        _checkpoint_state(os.path.join(straight_prior, "prior"), template))
    assert [name.split("_")[0] for name in os.listdir(os.path.join(workdir, "prior", "discarded_checkpoints"))] == ["20"]


def test_restoring_another_models_checkpoint_is_one_line(straight_prior):
    from apd.training.checkpoint import CheckpointError

    cfg = _prior_config().prior
    cfg.model.width = 8
    module = make_score_net(cfg.model, (2, 2, 1))
    template = init_prior_state(module, make_optimizer(cfg.training), (2, 2, 1), jax.random.PRNGKey(0))
    with pytest.raises(CheckpointError) as err:
        _checkpoint_state(os.path.join(straight_prior, "prior"), template)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400 and err.value.intact is None
    assert message.endswith("nor can any earlier one: they were written for another model, or all are damaged")


# ---------------------------------------------------------------- one line for every bad input


def _bad_workdir(tmp_path, kind):
    """A workdir of the given kind: 'file', 'damaged_config' (prior/config.json not JSON), 'other_seed' (a prior
    started with seed 5), or 'empty' (not there); 'damaged_data' also writes a damaged tmp_path/bad_data/mnist.npz."""
    workdir = tmp_path / "run"
    if kind == "file":
        workdir.write_text("not a folder")
    elif kind == "damaged_config":
        (workdir / "prior").mkdir(parents=True)
        (workdir / "prior" / "config.json").write_text('{"seed": 0, "prior": {')
    elif kind == "damaged_data":
        (tmp_path / "bad_data").mkdir()
        (tmp_path / "bad_data" / "mnist.npz").write_bytes(b"PK\x03\x04 cut short")
    elif kind == "other_seed":
        from apd.training.checkpoint import save_config
        from configs import digits_denoise

        config = digits_denoise.get_config()
        config.seed = 5
        save_config(str(workdir / "prior"), config)
    return workdir


@pytest.mark.parametrize(
    "script, args, workdir_kind, env, expected",
    [
        ("train.py", ["--config=configs/nope.py"], "empty", {},
         "error: config file configs/nope.py not found (configs/<task>.py lists the tasks)"),
        ("train.py", ["--config.operator.noise_stdd=0.1"], "empty", {},
         "error: unknown config field operator.noise_stdd (operator has no 'noise_stdd'); did you mean "
         "operator.noise_std?"),
        ("train.py", ["--config.flow.trainng.lr=1"], "empty", {},
         "error: unknown config field flow.trainng (flow has no 'trainng'); did you mean flow.training?"),
        ("train.py", ["--config.seed=abc"], "empty", {},
         "error: flag --config.seed=abc: invalid literal for int() with base 10: 'abc'"),
        ("train.py", ["--workdirr=x"], "empty", {}, "error: Unknown command line flag 'workdirr'. Did you mean: workdir ?"),
        ("train.py", ["--config.operator.noise_std=0"], "empty", {},
         "error: invalid config: operator.noise_std must be a number > 0 (the likelihood needs noise), got 0"),
        ("train.py", [], "file", {}, "error: workdir {workdir} is a file, not a folder"),
        ("train.py", ["--config=configs/bunny_mnist.py"], "empty", {"APD_DATA_DIR": "{tmp}/no_data"},
         "error: bun_zipper_res3.ply not found at {tmp}/no_data; put it there, set APD_DATA_DIR or pass data.path"),
        ("train.py", ["--config=configs/mnist.py"], "damaged_data", {"APD_DATA_DIR": "{tmp}/bad_data"},
         "error: {tmp}/bad_data/mnist.npz is damaged: not a readable .npz (File is not a zip file)"),
        ("train.py", [], "damaged_config", {}, "error: {workdir}/prior/config.json is damaged: not valid JSON"),
        ("train.py", [], "other_seed", {},
         "error: the config differs from the one {workdir}/prior was trained with: seed 5 -> 0; these change"),
        ("train.py", ["--stage=flow"], "empty", {},
         "error: no trained prior in {workdir}/prior: run with --stage prior (or all) first"),
        ("train.py", ["--resume_from=10"], "empty", {},
         "error: --resume_from needs --stage prior or --stage flow: the stage whose checkpoint it names"),
        ("evaluate.py", ["--config=configs/nope.py"], "empty", {},
         "error: config file configs/nope.py not found (configs/<task>.py lists the tasks)"),
        ("evaluate.py", ["--baselines=nope"], "empty", {}, "error: unknown baseline(s) nope; known: cpigdm, ddrm"),
        ("evaluate.py", ["--baselines=dps"], "file", {}, "error: workdir {workdir} is a file, not a folder"),
        ("evaluate.py", ["--baselines=dps"], "empty", {}, "error: no trained prior in {workdir}/prior"),
        ("evaluate.py", ["--baselines=dps", "--baseline_samples_for=dps"], "empty", {},
         "error: --baseline_samples_for takes name=count pairs (e.g. dps=1,mcg=1), got 'dps'"),
    ],
)
def test_command_line_bad_input_is_one_line(tmp_path, script, args, workdir_kind, env, expected):
    import subprocess
    import sys

    workdir = _bad_workdir(tmp_path, workdir_kind)
    before = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(tmp_path) for f in files}
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update({k: v.format(tmp=tmp_path) for k, v in env.items()})
    out = str(tmp_path / "eval") if script == "evaluate.py" else None
    command = [sys.executable, script, f"--workdir={workdir}", *args] + ([f"--out={out}"] if out else [])
    run = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith(expected.format(workdir=workdir, tmp=tmp_path))
    after = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(tmp_path) for f in files}
    assert after == before and (workdir_kind not in ("empty", "damaged_data") or not workdir.exists())
    if workdir_kind == "empty":
        assert not os.path.exists(os.path.join(REPO, "runs", "nope"))


def test_verbose_shows_the_traceback(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path}/run", "--config.operator.noise_stdd=1",
                          "--verbose"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("apd.cli.UserError: unknown config field operator.noise_stdd")


_KILLABLE_RUN = """
import sys
sys.path.insert(0, {tests!r})
from test_reliability import _dataset, _prior_config
from apd.training.prior import train_prior
train_prior(_prior_config(), {workdir!r}, _dataset())
"""


def test_prior_killed_with_sigkill_resumes_bit_for_bit(straight_prior, tmp_path):
    """A real SIGKILL as soon as the first checkpoint (10 of 20) is on disk, then the same command again; both
    processes share a compilation cache."""
    import signal
    import subprocess
    import sys
    import time

    workdir = str(tmp_path / "killed")
    script = _KILLABLE_RUN.format(tests=os.path.join(REPO, "tests"), workdir=workdir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    ckpt_dir = os.path.join(workdir, "prior", "checkpoints")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not os.path.isdir(os.path.join(ckpt_dir, "10")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpointer = Checkpointer(ckpt_dir, 3)
    killed_at = checkpointer.latest_step()
    checkpointer.close()
    rerun = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    template = _prior_template()
    _assert_trees_equal(_checkpoint_state(os.path.join(workdir, "prior"), template),
                        _checkpoint_state(os.path.join(straight_prior, "prior"), template))
    assert [m["step"] for m in read_metrics(os.path.join(workdir, "prior"))] == [5, 10, 15, 20]
    assert killed_at == 10, "the run saved its last checkpoint before the kill: only the rerun was tested"


_PROCESS_RUN = """
import sys
sys.path.insert(0, {tests!r})
from apd.training.sharding import maybe_initialize_distributed
assert maybe_initialize_distributed()
import jax
from test_reliability import _dataset, _prior_config
from apd.training.prior import train_prior
train_prior(_prior_config(num_steps=10), {workdir!r}, _dataset())
print(jax.process_index(), jax.process_count(), jax.device_count())
"""


def test_two_processes_train_like_one(straight_prior, tmp_path):
    """The prior stage as 2 processes on this machine (jax.distributed, CPU collectives), each feeding half of
    the global batch of 8, matches step 10 of the 1-process run to float tolerance."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = str(tmp_path / "two")
    script = _PROCESS_RUN.format(tests=os.path.join(REPO, "tests"), workdir=workdir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(env, JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert sorted(out.strip().splitlines()[-1] for out, _ in outs) == ["0 2 2", "1 2 2"]
    template = _prior_template()
    two = _checkpoint_state(os.path.join(workdir, "prior"), template)
    checkpointer = Checkpointer(os.path.join(straight_prior, "prior", "checkpoints"), 3)
    one = checkpointer.restore(template, 10)
    checkpointer.close()
    assert int(two["step"]) == int(one["step"]) == 10
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
                 two["params"], one["params"])
    assert [m["step"] for m in read_metrics(os.path.join(workdir, "prior"))] == [5, 10]  # one writer: process 0


def test_data_files_are_checked_against_sha256sums(tmp_path):
    import hashlib

    from apd.data.base import locate

    data = tmp_path / "mnist.npz"
    data.write_bytes(b"the real file")
    digest = hashlib.sha256(b"the real file").hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  other.npz\n{digest}  mnist.npz\n")
    assert locate(str(tmp_path), "mnist.npz") == data
    data.write_bytes(b"the real fil")  # truncated (same second: the size tells it apart)
    with pytest.raises(ValueError) as err:
        locate(str(data), "mnist.npz")
    assert str(err.value) == (f"{data} differs from its checksum in {tmp_path}/SHA256SUMS (sha256 "
                              f"{hashlib.sha256(b'the real fil').hexdigest()[:12]}..., expected {digest[:12]}...): the "
                              "file is damaged or another version; copy it again")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  other.npz\n")  # files it does not list are not checked
    assert locate(str(tmp_path), "mnist.npz") == data


def test_options_added_since_a_run_started_are_recorded_not_refused():
    from apd.training.checkpoint import config_changes

    saved = {"seed": 0, "data.name": "bunny_mnist", "flow.training.lr": 1e-3}
    new = {**saved, "data.vertex_order": "file", "flow.training.max_bad_steps": 5, "flow.signal_shape": [2]}
    assert config_changes(saved, new, ("seed", "data", "flow")) == (
        {}, {"data.vertex_order": [None, "file"], "flow.training.max_bad_steps": [None, 5]})
    other = {**new, "data.name": "mnist", "flow.training.lr": 2e-3}
    assert list(config_changes(saved, other, ("seed", "data", "flow"))[0]) == ["data.name", "flow.training.lr"]
    assert config_changes({**saved, "operator.name": "denoise"}, saved, ("flow",)) == ({}, {})
