"""Training the amortized posterior (the APD flow) against a frozen prior, data-parallel over a device mesh.

Two sources of training measurements:
- clean signals (default): each step draws training signals x_i (train split only) and forms their fixed
  measurements y_i (`apd.measurements`); every eval_every steps, 1-sample and mean-of-K PSNR on held-out
  validation measurements are logged.
- a measurement file (config.flow.training.measurements = 'y.npz', see `apd.measurement_files`): the flow
  trains on the user's y alone and no clean signal is touched (the output fit uses prior samples); the last
  min(eval_num_measurements, N // 10) measurements are held back, and validation logs the objective's own
  value on them, val_kl_plus_evidence = E[KL(q(.|y) || p(.|y)) - log p(y)] (nats, lower is better).
Either way each step minimises data_weight * (-log p(y|x)) - ELBO_prior(x) - log|det dG/dz| over num_z flow
samples per measurement (`apd.objective`).

Artefacts under workdir/flow/: config.json, checkpoints/ (state = params, ema_params, opt_state, step, rng),
geometry.npz (what figures of the signals need, no signals), metrics.jsonl and TensorBoard events.
"""
from __future__ import annotations

import hashlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from apd import flows
from apd.eval.metrics import psnr
from apd.data.base import save_geometry
from apd.measurement_files import prepare_measurements, read_measurement_file, take
from apd.measurements import measure, split_key
from apd.objective import (
    APDTerms, Estimate, apd_loss, apd_terms, as_estimate, conditions, data_weight_schedule, estimator_options,
    fit_wiener, forward_kl_loss, kl_plus_evidence, repeat_batch,
)
from apd.operators import OperatorFamily, broadcast_operator, make_operator_family
from apd.priors.base import Prior
from apd.training.checkpoint import Checkpointer, check_resume_config, load_config, record_config
from apd.training.loop import batch_indices, has_checkpoint, run_steps
from apd.optim import all_finite, apply_gradients, init_train_state, make_optimizer
from apd.training.sharding import data_mesh, replicated, shard_batch


FLOW_SECTIONS = ("seed", "data", "prior", "operator", "flow")  # what a resumed flow run must share with its start


def flow_record(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of config as workdir/flow/config.json records it: a measurement file's path made absolute."""
    saved = ml_collections.ConfigDict(config.to_dict())
    if saved.flow.training.get("measurements"):
        saved.flow.training.measurements = os.path.abspath(saved.flow.training.measurements)
    return saved


def flow_dir(workdir: str) -> str:
    return os.path.join(workdir, "flow")


def _checkpoint_dir(workdir: str) -> str:
    return os.path.join(flow_dir(workdir), "checkpoints")


def init_flow_state(flow: nn.Module, family: OperatorFamily, tx: optax.GradientTransformation, key: jax.Array):
    """Fresh training state for `flow`, whose condition shape comes from the family's operator."""
    init_key, state_key, op_key = jax.random.split(key, 3)
    op = family.draw(op_key)
    x = jnp.zeros((1,) + tuple(family.signal_shape), jnp.float32)
    cond = jax.tree.map(lambda a: a[None], flows.condition_of(op, op.apply(x[0])))
    params = flow.init(init_key, x, cond)["params"]
    return init_train_state(params, tx, state_key)


def flow_estimate(config: ml_collections.ConfigDict) -> str:
    """The name of the flow's estimate x0(y) of a run config (`apd.objective.ESTIMATES`): 'pinv' where not set."""
    return config.flow.model.get("estimate", "pinv")


FIT_OUTPUT_MODES = ("prior", "data", "none")
FIT_PAIRS = 512  # signal/measurement pairs the output map is fitted to
WIENER_FILE = "wiener.npz"  # in workdir/flow: the 'wiener' estimate (mean (*S), gain (d, m), rho) it trained with


def task_estimate(config: ml_collections.ConfigDict, family: OperatorFamily, prior: Prior,
                  cache_dir: str | None = None) -> tuple[Estimate, dict]:
    """(the flow's estimate of config, a record of its fit): for 'wiener', the Gaussian fit (`apd.objective.fit_wiener`)
    to the output fit's FIT_PAIRS prior samples (`output_fit_pairs`, kept in cache_dir) for the task's fixed operator,
    prior and operator only; its record {'rho'}."""
    name = flow_estimate(config)
    if name != "wiener":
        return as_estimate(name), {}
    x = jnp.asarray(fit_prior_samples(config.seed, prior, FIT_PAIRS, cache_dir))
    estimate, rho = fit_wiener(family.draw(jax.random.PRNGKey(0)), x)
    return estimate, {"rho": rho}


def save_estimate(workdir: str, estimate: Estimate, record: dict) -> None:
    """workdir/flow/WIENER_FILE for a 'wiener' estimate (nothing for the others, which need no file)."""
    if estimate.name == "wiener":
        np.savez(os.path.join(flow_dir(workdir), WIENER_FILE), mean=np.asarray(estimate.mean),
                 gain=np.asarray(estimate.gain), **record)


def load_estimate(workdir: str, config: ml_collections.ConfigDict) -> Estimate:
    """The trained flow's estimate: by name, with the 'wiener' fit its training saved in workdir/flow."""
    name = flow_estimate(config)
    if name != "wiener":
        return as_estimate(name)
    path = os.path.join(flow_dir(workdir), WIENER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: the 'wiener' flow needs the Gaussian fit its training saved")
    with np.load(path) as saved:
        return Estimate("wiener", jnp.asarray(saved["mean"]), jnp.asarray(saved["gain"]))


def output_fit_pairs(mode: str, seed: int, family: OperatorFamily, prior: Prior, train, num_pairs: int = FIT_PAIRS,
                     cache_dir: str | None = None, estimate: str | Estimate = "pinv"):
    """(x (n,*S), x0(y) (n,*S)): the pairs the flow's output map is fitted to, or None for mode 'none'.

    'prior': x = num_pairs samples of the prior (its own sampler, key split_key(seed, 'fit_output/prior')),
      measured with split_key(seed, 'fit_output'): APD then needs only the prior and the operator. With
      cache_dir the samples are kept there, named by seed, count and a fingerprint of the prior's parameters,
      so every task and evaluation on the same prior draws them once (a U-Net prior takes minutes on CPU).
    'data': the first num_pairs clean training signals with their training measurements (split_key(seed,
      'train')): uses clean signals beyond the prior's training, labelled as such in results.
    estimate: the flow's estimate x0(y) (`apd.objective.conditions`).
    """
    if mode not in FIT_OUTPUT_MODES:
        raise ValueError(f"flow.training.fit_output must be one of {FIT_OUTPUT_MODES}, got {mode!r}")
    if mode == "none":
        return None
    if mode == "data":
        x = jnp.asarray(train[: min(num_pairs, len(train))], jnp.float32)
        key = split_key(seed, "train")
    else:
        x = jnp.asarray(fit_prior_samples(seed, prior, num_pairs, cache_dir))
        key = split_key(seed, "fit_output")
    ops, y = measure(family, key, x, jnp.arange(x.shape[0]))
    return x, jax.jit(conditions)(ops, y, prior, as_estimate(estimate)).estimate


def fit_prior_samples(seed: int, prior: Prior, num_pairs: int, cache_dir: str | None) -> np.ndarray:
    """The output fit's prior samples (num_pairs,*S), read from or written to cache_dir when it is given."""
    path = None
    if cache_dir is not None:
        digest = hashlib.sha1()
        for leaf in jax.tree.leaves(prior):
            digest.update(np.asarray(leaf).tobytes())
        path = os.path.join(cache_dir, f"fit_output_samples_seed{seed}_n{num_pairs}_{digest.hexdigest()[:12]}.npy")
        if os.path.exists(path):
            return np.load(path)
    x = np.asarray(jax.jit(prior.sample, static_argnums=1)(split_key(seed, "fit_output/prior"), num_pairs), np.float32)
    if path is not None and jax.process_index() == 0:
        os.makedirs(cache_dir, exist_ok=True)
        np.save(path, x)
    return x


def start_params(config, flow: nn.Module, family: OperatorFamily, prior: Prior, train, cache_dir: str | None = None,
                 estimate: Estimate | None = None) -> dict:
    """The flow's parameters before its first step: the initialisation (key PRNGKey(seed + 7)) with the output
    map fitted (`flows.fit_output`) to the pairs of config.flow.training.fit_output ('prior' by default; its
    samples kept in cache_dir when given, see `output_fit_pairs`). estimate: the flow's (default
    `task_estimate(config, ...)`).
    Untrained couplings make this the per-entry affine-Gaussian q(x|y) = N(g x0(y) + b, diag(std^2))."""
    tx = make_optimizer(config.flow.training)
    params = jax.jit(lambda k: init_flow_state(flow, family, tx, k)["params"])(jax.random.PRNGKey(config.seed + 7))
    pairs = output_fit_pairs(config.flow.training.get("fit_output", "prior"), config.seed, family, prior, train,
                             cache_dir=cache_dir,
                             estimate=task_estimate(config, family, prior, cache_dir)[0] if estimate is None else estimate)
    return params if pairs is None else flows.fit_output(params, *pairs)


def make_update(flow: nn.Module, tx, training_cfg, estimate: str | Estimate = "pinv"):
    """update(state, prior, ops, y (B,*M), x=None) -> (state, metrics): one APD step on given measurements; pure,
    jit-able.

    The prior is an argument (its parameters are traced, not baked into the compiled step); ops: B operators
    (leading axis B). With training_cfg.forward_kl_steps = W > 0 and the signals x (B,*S) that y measures, the
    first W steps minimise -log q(x|y) instead (`apd.objective.forward_kl_loss`; the batches of those steps hold
    prior samples only) and the data-weight ramp starts after them. estimate: the flow's estimate x0(y).
    """
    num_z = int(training_cfg.num_z)
    decay, anneal = float(training_cfg.ema_decay), int(training_cfg.get("anneal_steps", 0))
    estimator = estimator_options(training_cfg)
    prior_key = "prior_surrogate" if estimator["prior_gradient"] == "score" else "prior_elbo"
    warm = int(training_cfg.get("forward_kl_steps", 0))

    def update(state, prior, ops, y, x=None):
        rng, key = jax.random.split(state["rng"])
        weight = data_weight_schedule(state["step"] - warm, anneal)

        def loss_fn(params):
            def apd():
                terms = apd_terms(flow, params, prior, ops, y, key, num_z=num_z, estimate=estimate, **estimator)
                return apd_loss(terms, weight), terms

            if x is None or not warm:
                return apd()

            def maximum_likelihood():  # the APD terms are not computed in this phase: logged as 0
                zeros = APDTerms(*([jnp.zeros(y.shape[0], jnp.float32)] * len(APDTerms._fields)))
                return forward_kl_loss(flow, params, ops, y, x, prior, estimate), zeros

            return jax.lax.cond(state["step"] < warm, maximum_likelihood, apd)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        metrics = {
            "loss": loss,
            "fidelity": jnp.mean(terms.fidelity),
            prior_key: jnp.mean(terms.prior_elbo),
            "logdet": jnp.mean(terms.logdet),
            "data_weight": weight,
            "grad_norm": optax.tree.norm(grads),
        }
        finite = all_finite(loss, grads)
        metrics["skipped"] = jnp.logical_not(finite).astype(jnp.float32)  # such a step leaves the parameters alone
        return apply_gradients(state, grads, tx, decay, rng, finite), metrics

    return update


def make_train_step(flow: nn.Module, family: OperatorFamily, tx, training_cfg, measurement_key,
                    estimate: str | Estimate = "pinv"):
    """step(state, prior, x (B,*S), index (B,)) -> (state, metrics): measures x (fixed y_i per index i), then
    `make_update`'s step; pure and jit-able."""
    update = make_update(flow, tx, training_cfg, estimate)

    def step(state, prior, x, index):
        ops, y = measure(family, measurement_key, x, index)
        return update(state, prior, ops, y, x)

    return step


def make_objective_eval_fn(flow: nn.Module, num_z: int, elbo_draws: int = 1, estimate: str | Estimate = "pinv"):
    """eval(params, prior, ops, y (B,*M), key) -> KL(q(.|y) || p(.|y)) - log p(y) per measurement (B,), nats:
    the validation of a flow trained without ground truth (num_z flow samples per measurement)."""

    def evaluate(params, prior, ops, y, key):
        terms = apd_terms(flow, params, prior, ops, y, key, num_z=num_z, elbo_draws=elbo_draws, estimate=estimate)
        return kl_plus_evidence(terms)

    return evaluate


def measurement_training_set(config, family: OperatorFamily, path: str):
    """(y (N,*M) float32, per-measurement operators (leading axis N) or None, reference operator) of a user's
    measurement file for the task of config; one-line ValueError for a file that does not fit the task."""
    reference = family.draw(jax.random.PRNGKey(0))
    y, mask = read_measurement_file(path)
    blind = config.operator.name == "inpaint_blind"
    y, ops = prepare_measurements(y, mask, reference, f"operator {config.operator.name!r}", blind=blind)
    per_measurement = blind or getattr(reference, "show_mask", False)  # blind: the likelihood needs each own mask
    return np.asarray(y), (ops if per_measurement else None), reference


def make_eval_fn(flow: nn.Module, family: OperatorFamily, num_samples: int, measurement_key,
                 estimate: str | Estimate = "pinv"):
    """eval(params, prior, x (B,*S), index (B,), key) -> (PSNR of one sample (B,), PSNR of the mean of num_samples
    (B,)), each estimate clipped to [0, 1] as in the evaluation protocol."""

    def evaluate(params, prior, x, index, key):
        ops, y = measure(family, measurement_key, x, index)
        cond_k = repeat_batch(conditions(ops, y, prior, estimate), num_samples)
        samples = flows.sample(flow, params, key, cond_k).reshape((x.shape[0], num_samples) + x.shape[1:])
        return psnr(jnp.clip(samples[:, 0], 0, 1), x), psnr(jnp.clip(jnp.mean(samples, axis=1), 0, 1), x)

    return evaluate


def train_flow(
    config: ml_collections.ConfigDict, workdir: str, prior: Prior, dataset, resume_from: int | None = None
) -> tuple[nn.Module, dict]:
    """Train (or resume, or load) the APD flow of `config` in workdir/flow; returns (flow module, EMA params).

    dataset: .signal_shape and .kind (apd.data.Dataset); .train and .val arrays (N,*S) in [0,1] are read only
    without config.flow.training.measurements (and for fit_output='data'), never with it.
    resume_from: resume from this checkpoint step, moving later ones aside (as `train_prior`).
    Raises ValueError, before any work, when workdir holds a flow trained with other settings
    (`check_resume_config`), and CheckpointError when its latest checkpoint cannot be restored.
    """
    tcfg = config.flow.training
    check_resume_config(flow_dir(workdir), flow_record(config), FLOW_SECTIONS)
    measurements = tcfg.get("measurements")
    mode = tcfg.get("fit_output", "prior")
    if measurements and mode == "data":
        raise ValueError("flow.training.fit_output='data' fits clean signals; with flow.training.measurements the "
                         "flow stage uses none: use 'prior' or 'none'")
    signal_shape = tuple(dataset.signal_shape)
    flow = flows.make_flow(config.flow.model, signal_shape)
    family = make_operator_family(config.operator, signal_shape)
    if measurements:
        y_all, ops_all, reference = measurement_training_set(config, family, measurements)
    tx = make_optimizer(tcfg)
    mesh = data_mesh()
    init = jax.jit(lambda k: init_flow_state(flow, family, tx, k), out_shardings=replicated(mesh))
    state = init(jax.random.PRNGKey(config.seed + 7))

    checkpointer = Checkpointer(_checkpoint_dir(workdir), tcfg.keep_checkpoints)
    if resume_from is not None:
        checkpointer.discard_after(resume_from)
    latest = checkpointer.latest_step()
    cache_dir = os.path.join(workdir, "prior")
    if latest is not None:
        state = checkpointer.restore(state, latest)
        estimate, estimate_record = load_estimate(workdir, config), None  # the fit saved at the run's start
    else:
        estimate, estimate_record = task_estimate(config, family, prior, cache_dir)
        train = dataset.train if mode == "data" else None
        params = start_params(config, flow, family, prior, train, cache_dir=cache_dir, estimate=estimate)
        params = jax.device_put(params, replicated(mesh))
        state = {**state, "params": params, "ema_params": jax.tree.map(jnp.copy, params)}
    if latest is not None and latest >= tcfg.num_steps:
        checkpointer.close()
        return flow, state["ema_params"]

    is_main = jax.process_index() == 0
    if is_main:
        saved = flow_record(config)
        saved.flow.signal_shape = signal_shape
        record_config(flow_dir(workdir), saved, FLOW_SECTIONS, latest)
        save_geometry(os.path.join(flow_dir(workdir), "geometry.npz"), dataset)
        if estimate_record is not None:
            save_estimate(workdir, estimate, estimate_record)
    prior = jax.device_put(prior, replicated(mesh))
    if measurements:
        batch, validation = _measurement_batches(config, flow, tx, mesh, prior, y_all, ops_all, reference, estimate)
        step_fn = jax.jit(make_update(flow, tx, tcfg, estimate), donate_argnums=0,
                          out_shardings=(replicated(mesh), None))
    else:
        batch, validation = _signal_batches(config, flow, family, mesh, prior, dataset, workdir, estimate)
        step_fn = jax.jit(make_train_step(flow, family, tx, tcfg, split_key(config.seed, "train"), estimate),
                          donate_argnums=0, out_shardings=(replicated(mesh), None))
    state = run_steps(state, step_fn, batch, tcfg, checkpointer, flow_dir(workdir), "flow", validation)
    return flow, state["ema_params"]


PRIOR_SIGNALS_FILE = "prior_signals.npy"
PRIOR_SAMPLE_CHUNK = 512


def prior_training_signals(seed: int, prior: Prior, count: int, path: str) -> np.ndarray:
    """`count` prior samples (count,*S) for the flow's training set, drawn once (chunk c with key
    fold_in(split_key(seed, 'train/prior_signals'), c)) and kept in `path`, so a resumed run reuses them."""
    if os.path.exists(path):
        saved = np.load(path)
        if len(saved) == count:
            return saved
    sample = jax.jit(prior.sample, static_argnums=1)
    key = split_key(seed, "train/prior_signals")
    starts = range(0, count, PRIOR_SAMPLE_CHUNK)
    chunks = [np.asarray(sample(jax.random.fold_in(key, c), min(PRIOR_SAMPLE_CHUNK, count - start)))
              for c, start in enumerate(tqdm(starts, desc=f"prior samples for training ({count})",
                                             unit="chunk", disable=jax.process_index() != 0))]
    signals = np.concatenate(chunks).astype(np.float32)
    if jax.process_index() == 0:
        np.save(path, signals)
    return signals


def _signal_batches(config, flow, family, mesh, prior, dataset, workdir, estimate: str | Estimate = "pinv"):
    """(batch(step), validation(done, state)) of training on clean signals: x and their indices; PSNR.

    flow.training.prior_signals = P > 0 appends P prior samples to the training signals (a training set the flow
    cannot memorise; the forward_kl_steps warm start draws from them alone; data_signals=False leaves the clean
    training signals out, so the flow stage touches none but the validation signals it logs); fresh_noise draws
    each step's measurements anew (index past every training index) instead of one fixed y_i per training signal."""
    tcfg = config.flow.training
    eval_n = min(int(tcfg.eval_num_measurements), len(dataset.val))
    eval_fn = jax.jit(make_eval_fn(flow, family, int(tcfg.eval_num_samples), split_key(config.seed, "val"), estimate))
    eval_x = jnp.asarray(dataset.val[:eval_n])
    eval_idx = jnp.arange(eval_n)
    train = np.asarray(dataset.train if tcfg.get("data_signals", True) else dataset.train[:0], np.float32)
    num_prior = int(tcfg.get("prior_signals", 0))
    if num_prior:
        path = os.path.join(flow_dir(workdir), PRIOR_SIGNALS_FILE)
        train = np.concatenate([train, prior_training_signals(config.seed, prior, num_prior, path)])
    fresh = bool(tcfg.get("fresh_noise", False))

    warm = int(tcfg.get("forward_kl_steps", 0))

    def batch(step):
        if step < warm:  # maximum-likelihood warm start: prior samples only, never clean signals
            first_prior = train.shape[0] - num_prior
            idx = first_prior + batch_indices(num_prior, config.seed, 1, step, tcfg.batch_size)
        else:
            idx = batch_indices(train.shape[0], config.seed, 1, step, tcfg.batch_size)
        index = idx
        if fresh:
            first = train.shape[0] + step * tcfg.batch_size + jax.process_index() * len(idx)
            index = first + np.arange(len(idx))
        return (prior, *shard_batch(mesh, (train[idx], index.astype(np.int32))))

    def validation(done, state):
        if not eval_n or (done % tcfg.eval_every and done != tcfg.num_steps):
            return {}
        one, mean = eval_fn(state["ema_params"], prior, eval_x, eval_idx, jax.random.PRNGKey(done))
        return {"val_psnr_1": float(jnp.mean(one)), f"val_psnr_mean{int(tcfg.eval_num_samples)}": float(jnp.mean(mean))}

    return batch, validation


def _measurement_batches(config, flow, tx, mesh, prior, y_all, ops_all, reference, estimate: str | Estimate = "pinv"):
    """(batch(step), validation(done, state)) of training on a measurement file: operators and y; validation
    by the objective's value (KL + evidence) on the last held-back measurements."""
    tcfg = config.flow.training
    n = y_all.shape[0]
    held = min(int(tcfg.eval_num_measurements), n // 10)
    n_train = n - held

    def ops_of(index):
        return broadcast_operator(reference, len(index)) if ops_all is None else take(ops_all, index)

    def batch(step):
        idx = batch_indices(n_train, config.seed, 1, step, tcfg.batch_size)
        return (prior, *shard_batch(mesh, (ops_of(idx), y_all[idx])))

    eval_fn = jax.jit(make_objective_eval_fn(flow, int(tcfg.eval_num_samples), int(tcfg.elbo_draws), estimate))
    held_idx = np.arange(n_train, n)

    def validation(done, state):
        if not held or (done % tcfg.eval_every and done != tcfg.num_steps):
            return {}
        value = eval_fn(state["ema_params"], prior, ops_of(held_idx), jnp.asarray(y_all[held_idx]),
                        jax.random.PRNGKey(done))
        return {"val_kl_plus_evidence": float(jnp.mean(value))}

    return batch, validation


def flow_exists(workdir: str) -> bool:
    """Whether workdir/flow holds a config and at least one checkpoint."""
    return has_checkpoint(flow_dir(workdir), _checkpoint_dir(workdir))


def load_flow(workdir: str, step: int | None = None) -> tuple[nn.Module, dict, ml_collections.ConfigDict, int]:
    """(flow module, EMA params, run config, checkpoint step) from workdir/flow: the checkpoint of `step`
    (default: the latest)."""
    if not flow_exists(workdir):
        raise FileNotFoundError(
            f"no trained sampler in {os.path.abspath(flow_dir(workdir))}: "
            f"run `python train.py --config configs/<task>.py --workdir {workdir}` first"
        )
    config = load_config(flow_dir(workdir))
    signal_shape = tuple(config.flow.signal_shape)
    flow = flows.make_flow(config.flow.model, signal_shape)
    family = make_operator_family(config.operator, signal_shape)
    tx = make_optimizer(config.flow.training)
    template = jax.eval_shape(lambda k: init_flow_state(flow, family, tx, k), jax.random.PRNGKey(0))
    checkpointer = Checkpointer(_checkpoint_dir(workdir), config.flow.training.keep_checkpoints)
    state = checkpointer.restore(template, step)
    checkpointer.close()
    return flow, state["ema_params"], config, int(state["step"])
