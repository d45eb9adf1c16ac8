"""Training the diffusion prior: denoising score matching on the noise, data-parallel over a device mesh.

For data x0 (in [0, 1], as the dataset gives it), t and e ~ N(0, I), x_t = alpha_t x0 + sigma_t e and the
loss is the mean over batch and signal entries of (eps_theta(x_t, t) - e)^2. Times are uniform on
[t_min, 1], or with `likelihood_weighting` drawn from the importance density q(t) ∝ g(t)^2 / sigma_t^2, which
makes the unweighted loss an estimate (up to the constant Z / 2) of the likelihood-weighted score matching
of Song et al. 2021.

Artefacts under workdir/prior/: config.json (the run's config, with prior.signal_shape added),
checkpoints/ (orbax; state = params, ema_params, opt_state, step, rng), metrics.jsonl and TensorBoard
events (with val_dsm, the validation loss of the EMA parameters, at every checkpoint), samples.png (EMA prior
samples below training signals).
"""
from __future__ import annotations

import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from apd.data import load_dataset
from apd.eval.figures import save_dataset_figure
from apd.nets import make_score_net
from apd.priors import ScoreNetPrior
from apd.sde import VPSDE
from apd.training.checkpoint import Checkpointer, check_resume_config, load_config, record_config
from apd.training.loop import batch_indices, has_checkpoint, run_steps
from apd.optim import all_finite, apply_gradients, init_train_state, make_optimizer
from apd.training.sharding import data_mesh, replicated, shard_batch

PRIOR_SECTIONS = ("seed", "data", "prior")  # what a resumed prior run must share with its start
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_t (B,*S), t (B,)) -> eps_hat (B,*S)


def prior_dir(workdir: str) -> str:
    return os.path.join(workdir, "prior")


def _checkpoint_dir(workdir: str) -> str:
    return os.path.join(prior_dir(workdir), "checkpoints")


def sample_times(sde: VPSDE, key: jax.Array, n: int, likelihood_weighting: bool) -> jax.Array:
    """n training times (n,): from the importance density q(t) if likelihood_weighting, else U[t_min, 1]."""
    if likelihood_weighting:
        return sde.sample_importance_time(key, (n,))
    return jax.random.uniform(key, (n,), minval=sde.t_min, maxval=1.0)


def dsm_loss(eps_fn: EpsFn, sde: VPSDE, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """mean over all entries of (eps_fn(alpha_t x0 + sigma_t noise, t) - noise)^2; x0, noise (B,*S), t (B,)."""
    eps_hat = eps_fn(sde.marginal(x0, t, noise), t)
    return jnp.mean((eps_hat - noise) ** 2)


VAL_SIGNALS, VAL_DRAWS = 256, 4  # the validation DSM loss: the first 256 validation signals, 4 draws each


def validation_loss_fn(module: nn.Module, sde: VPSDE, val: np.ndarray, key: jax.Array, draws: int = VAL_DRAWS,
                       batch: int = 64) -> Callable[[dict], float]:
    """params -> the DSM loss on val (N,*S) averaged over `draws` (t uniform on [t_min, 1], noise) per signal,
    fixed by `key` (and not by `batch`): the same draws at every call, so values differ only by the parameters."""
    blocks = []
    for j in range(draws):
        k_t, k_n = jax.random.split(jax.random.fold_in(key, j))
        t = jax.random.uniform(k_t, (len(val),), minval=sde.t_min, maxval=1.0)
        noise = jax.random.normal(k_n, val.shape)
        blocks += [(jnp.asarray(val[i : i + batch]), t[i : i + batch], noise[i : i + batch]) for i in range(0, len(val), batch)]
    loss = jax.jit(lambda p, x, t, e: dsm_loss(lambda xt, s: module.apply({"params": p}, xt, s), sde, x, t, e) * len(x))
    return lambda params: sum(float(loss(params, *b)) for b in blocks) / (draws * len(val))


def _uses_dropout(model_cfg) -> bool:
    return (model_cfg.get("dropout") or 0.0) > 0.0


def init_prior_state(module: nn.Module, tx: optax.GradientTransformation, signal_shape, key: jax.Array) -> dict:
    """Fresh training state (see optim.init_train_state) for `module` on signals of `signal_shape`."""
    init_key, state_key = jax.random.split(key)
    x = jnp.zeros((1,) + tuple(signal_shape), jnp.float32)
    params = module.init(init_key, x, jnp.ones((1,), jnp.float32))["params"]
    return init_train_state(params, tx, state_key)


def make_train_step(module: nn.Module, sde: VPSDE, tx: optax.GradientTransformation, training_cfg, dropout: bool):
    """step(state, batch (B,*S)) -> (state, {'loss', 'grad_norm', 'skipped'}): one DSM step with EMA; pure,
    jit-able. A step whose loss or gradient is not finite leaves the parameters as they were (skipped = 1).

    training_cfg needs ema_decay and likelihood_weighting. dropout: call the module with train=True and a
    'dropout' key (for nets built with dropout > 0).
    """
    decay, weighting = float(training_cfg.ema_decay), bool(training_cfg.likelihood_weighting)

    def step(state, batch):
        rng, t_key, noise_key, dropout_key = jax.random.split(state["rng"], 4)
        t = sample_times(sde, t_key, batch.shape[0], weighting)
        noise = jax.random.normal(noise_key, batch.shape)

        def loss_fn(params):
            if dropout:
                eps_fn = lambda x, s: module.apply({"params": params}, x, s, True, rngs={"dropout": dropout_key})
            else:
                eps_fn = lambda x, s: module.apply({"params": params}, x, s)
            return dsm_loss(eps_fn, sde, batch, t, noise)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        finite = all_finite(loss, grads)
        new_state = apply_gradients(state, grads, tx, decay, rng, finite)
        skipped = jnp.logical_not(finite).astype(jnp.float32)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "skipped": skipped}

    return step


def train_prior(
    config: ml_collections.ConfigDict, workdir: str, dataset=None, resume_from: int | None = None
) -> ScoreNetPrior:
    """Train (or resume, or just load) the score-network prior of `config` in workdir/prior.

    dataset: an apd.data.Dataset (or an object with its fields: train (N,*S) float32, signal_shape, kind,
    and the geometry its figures need); default `apd.data.load_dataset(config.data)`.
    resume_from: resume from this checkpoint step, moving later ones aside (`Checkpointer.discard_after`), e.g.
    when the latest is damaged (restoring it raises a CheckpointError that names the newest intact step).
    Returns the prior with EMA parameters. Raises ValueError, before any work, when workdir holds a prior
    trained with other settings (`check_resume_config`).
    """
    tcfg = config.prior.training
    check_resume_config(prior_dir(workdir), config, PRIOR_SECTIONS)
    if tcfg.batch_size % jax.device_count():
        raise ValueError(f"prior batch_size {tcfg.batch_size} must be a multiple of the {jax.device_count()} devices")
    checkpointer = Checkpointer(_checkpoint_dir(workdir), tcfg.keep_checkpoints)
    if resume_from is not None:
        checkpointer.discard_after(resume_from)
    latest = checkpointer.latest_step()
    if latest is not None and latest >= tcfg.num_steps:
        checkpointer.close()
        return load_prior(workdir)
    if dataset is None:
        dataset = load_dataset(config.data)

    signal_shape = tuple(dataset.signal_shape)
    is_main = jax.process_index() == 0
    if is_main:
        saved = ml_collections.ConfigDict(config.to_dict())
        saved.prior.signal_shape = signal_shape
        record_config(prior_dir(workdir), saved, PRIOR_SECTIONS, latest)

    sde = VPSDE(**config.prior.sde)
    module = make_score_net(config.prior.model, signal_shape)
    tx = make_optimizer(tcfg)
    mesh = data_mesh()
    init = jax.jit(lambda k: init_prior_state(module, tx, signal_shape, k), out_shardings=replicated(mesh))
    state = init(jax.random.PRNGKey(config.seed))
    if latest is not None:
        state = checkpointer.restore(state, latest)
    step_fn = jax.jit(
        make_train_step(module, sde, tx, tcfg, _uses_dropout(config.prior.model)),
        donate_argnums=0,
        out_shardings=replicated(mesh),
    )

    train = np.asarray(dataset.train, np.float32)

    def batch(step):
        return (shard_batch(mesh, train[batch_indices(train.shape[0], config.seed, 0, step, tcfg.batch_size)]),)

    val = np.asarray(dataset.val[:VAL_SIGNALS], np.float32)
    val_loss = validation_loss_fn(module, sde, val, jax.random.PRNGKey(config.seed)) if len(val) else None

    def validation(done, state):
        if val_loss is None or (done % tcfg.ckpt_every and done != tcfg.num_steps):
            return {}
        return {"val_dsm": val_loss(state["ema_params"])}

    state = run_steps(state, step_fn, batch, tcfg, checkpointer, prior_dir(workdir), "prior", validation)

    prior = ScoreNetPrior(state["ema_params"], module, sde, signal_shape)
    sample = jax.jit(lambda p, k: p.sample(k, tcfg.num_samples, num_steps=tcfg.sample_steps))
    samples = np.asarray(sample(prior, jax.random.PRNGKey(config.seed + 1)))  # every process runs the program
    if is_main:
        rows = [("training data", train[: tcfg.num_samples]), ("prior samples", samples)]
        save_dataset_figure(os.path.join(prior_dir(workdir), "samples.png"), dataset, rows)
    return prior


def prior_exists(workdir: str) -> bool:
    """Whether workdir/prior holds a config and at least one checkpoint."""
    return has_checkpoint(prior_dir(workdir), _checkpoint_dir(workdir))


def load_prior(workdir: str) -> ScoreNetPrior:
    """The prior with EMA parameters from the latest checkpoint in workdir/prior (config from config.json)."""
    config = load_config(prior_dir(workdir))
    signal_shape = tuple(config.prior.signal_shape)
    module = make_score_net(config.prior.model, signal_shape)
    tx = make_optimizer(config.prior.training)
    template = jax.eval_shape(lambda k: init_prior_state(module, tx, signal_shape, k), jax.random.PRNGKey(0))
    checkpointer = Checkpointer(_checkpoint_dir(workdir), config.prior.training.keep_checkpoints)
    state = checkpointer.restore(template)
    checkpointer.close()
    return ScoreNetPrior(state["ema_params"], module, VPSDE(**config.prior.sde), signal_shape)
