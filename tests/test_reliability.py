"""Runs that survive: non-finite steps skipped and counted, a stop after too many, resume bit for bit (prior and
flow), config changes on resume refused or recorded, unreadable checkpoints named, and one line for every bad
input on the command line."""
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
