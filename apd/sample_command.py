"""The sampling command (`sample.py`, console script `apd-sample`): posterior samples for a file of measurements.

    python sample.py --workdir runs/digits_denoise --measurements y.npz [--num_samples 128] [--out DIR] [--summary]
    python sample.py --workdir runs/digits_denoise --measurements y.npz --refine_steps 100 [--refine_lr 1e-4]

Reads y (N,*M) from .npy, or from .npz as the array `y` with per-measurement masks as `mask` (N,*S) where the
task has masks (NaN in y marks entries not measured; `apd.measurement_files`), checks them against the
operator the sampler was trained for, samples in batches of --batch_size measurements with a progress bar and
writes to --out (default <workdir>/samples):
  samples.npz    samples (N, K, *S) float32                            (without --summary)
  summary.npz    mean, std (N, *S); quantiles (N, Q, *S) at levels (Q,) (with --summary, no samples kept)
  figures/measurement_<i>.png   y (shown in signal space), the first samples, mean and std of measurement i,
                 as an image grid, mesh render or lat-lon map (the first --max_figures measurements)
Measurement i's samples come from fold_in(PRNGKey(--seed), i) alone: the same seed gives the same samples
whatever --batch_size. With --refine_steps N > 0 the flow is first refined on each measurement by N Adam steps
of its training objective (`apd.refine`, with the prior in <workdir>/prior: N * 64 * 2 * elbo_draws score
evaluations per measurement, each with a backward pass), and its samples come from its refined flow (measurements
refined in calls of apd.refine.per_call() at most). Every problem with the inputs stops the command with one line
and exit status 1 before anything is written.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from apd.refine import LR

config_flags.DEFINE_config_file("config", None, "Optional task config (configs/<task>.py): its operator must "
                                "equal the one the sampler was trained for.")
flags.DEFINE_string("workdir", None, "Run directory holding the trained flow (workdir/flow).")
flags.DEFINE_string("measurements", None, "Measurement file: .npy (y) or .npz (y, optional mask).")
flags.DEFINE_string("mask", None, "Optional file (.npy, or .npz array 'mask') with one mask (S) for every y.")
flags.DEFINE_integer("num_samples", 128, "Posterior samples per measurement (K).")
flags.DEFINE_integer("batch_size", 0, "Measurements per network call (0: as many as keep K*prod(S) floats "
                     "per call under 2^22).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_bool("summary", False, "Write only mean, std and quantiles (summary.npz) instead of all samples.")
flags.DEFINE_integer("max_figures", 16, "Figures for the first this many measurements (0: none).")
flags.DEFINE_integer("step", None, "Flow checkpoint to use (default: the latest).")
flags.DEFINE_string("out", None, "Output folder (default: <workdir>/samples).")
flags.DEFINE_integer("refine_steps", 0, "Refine the flow on each measurement by this many steps of its objective "
                     "before sampling (0: off; semi-amortized inference, apd.refine).")
flags.DEFINE_float("refine_lr", LR, "Adam learning rate of the refinement.")
FLAGS = flags.FLAGS

QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
FIGURE_SAMPLES = 4  # samples shown in a measurement's figure
FLOATS_PER_CALL = 2**22


def check_operator(trained: dict, given: dict) -> None:
    """Raise ValueError naming the settings where the given operator differs from the trained one."""
    keys = sorted(k for k in set(trained) | set(given) if trained.get(k) != given.get(k))
    if keys:
        diff = ", ".join(f"{k}: trained {trained.get(k)!r}, given {given.get(k)!r}" for k in keys)
        raise ValueError(f"the sampler was trained for another operator ({diff}): train a flow for this operator "
                         "or drop the setting")


def figure_geometry(workdir: str, config, signal_shape):
    """What figures need (an apd.data.Dataset with empty splits): workdir/flow/geometry.npz, else the task's
    data set, else an image grid for (H, W, C) signals; None when nothing serves."""
    import numpy as np

    from apd.data import load_dataset
    from apd.data.base import Dataset, load_geometry

    path = os.path.join(workdir, "flow", "geometry.npz")
    if os.path.exists(path):
        return load_geometry(path)
    try:
        return load_dataset(config.data)
    except (FileNotFoundError, ValueError, KeyError, ImportError):
        pass
    if len(signal_shape) == 3 and signal_shape[-1] in (1, 3):
        empty = np.zeros((0,) + tuple(signal_shape), np.float32)
        return Dataset("image", empty, empty, empty, tuple(signal_shape), "image", {})
    return None


def sample_file(workdir, measurements, *, num_samples=128, out=None, summary=False, batch_size=0, seed=0,
                mask_file=None, max_figures=16, step=None, operator=None, refine_steps=0, refine_lr=LR,
                log=print) -> dict[str, str]:
    """Sample the posterior of every measurement in the file; returns {name: path} of the files written.

    operator: optional operator settings (dict) that must equal the trained ones. refine_steps, refine_lr: the
    flow refined on each measurement first (`Sampler.refine_each`, measurement i with fold_in(key_i, 1); 0: off).
    Raises ValueError or FileNotFoundError (one line) before writing anything when an input is wrong.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm.auto import tqdm

    from apd.eval.figures import save_dataset_figure
    from apd.measurement_files import prepare_measurements, read_measurement_file, split_batches, take
    from apd import refine
    from apd.operators import read_mask_file
    from apd.sampler import load_sampler
    from apd.training.prior import load_prior

    if num_samples < 1:
        raise ValueError(f"--num_samples must be at least 1, got {num_samples}")
    refine.check(refine_steps, refine_lr)
    sampler = load_sampler(workdir, step)
    trained = sampler.config.operator.to_dict()
    if operator is not None:
        check_operator(trained, operator)
    y, mask = read_measurement_file(measurements)
    if mask_file is not None:
        if mask is not None:
            raise ValueError(f"{measurements} holds masks already: drop --mask")
        mask = np.asarray(read_mask_file(mask_file, sampler.signal_shape))
    reference = sampler.family.draw(jax.random.PRNGKey(0))
    y, ops = prepare_measurements(y, mask, reference, f"operator {trained.get('name')!r}",
                                  blind=trained.get("name") == "inpaint_blind")
    prior = load_prior(workdir) if refine_steps else None
    n, shape = y.shape[0], sampler.signal_shape
    per_call = batch_size or max(1, FLOATS_PER_CALL // (num_samples * int(np.prod(shape))))
    if refine_steps:
        per_call = min(per_call, refine.per_call())
    geometry = figure_geometry(workdir, sampler.config, shape) if max_figures > 0 else None

    out = out or os.path.join(workdir, "samples")
    os.makedirs(out, exist_ok=True)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(n))
    operator_arg = ops if sampler.needs_operator else None
    parts = {name: [] for name in (("mean", "std", "quantiles") if summary else ("samples",))}
    shown_samples = []
    levels = jnp.asarray(QUANTILE_LEVELS)
    refined = f", each refined {refine_steps} steps" if refine_steps else ""
    with tqdm(total=n, desc=f"sampling {n} measurements x {num_samples}{refined}", unit="y") as bar:
        for rows in split_batches(n, per_call):
            params = None
            if refine_steps:
                params = sampler.refine_each(prior, y[rows], keys[rows], take(ops, rows), refine_steps, refine_lr)
            x = sampler.sample_each(y[rows], num_samples, keys[rows],
                                    None if operator_arg is None else take(operator_arg, rows), params=params)
            if summary:
                parts["mean"].append(np.asarray(jnp.mean(x, axis=1)))
                parts["std"].append(np.asarray(jnp.std(x, axis=1)))
                parts["quantiles"].append(np.asarray(jnp.moveaxis(jnp.quantile(x, levels, axis=1), 0, 1)))
            else:
                parts["samples"].append(np.asarray(x))
            if len(shown_samples) * per_call < max_figures:
                shown_samples.append(np.asarray(x[:, :FIGURE_SAMPLES]))
            bar.update(x.shape[0])
    arrays = {name: np.concatenate(chunks).astype(np.float32) for name, chunks in parts.items()}
    paths = {}
    if summary:
        arrays["levels"] = np.asarray(QUANTILE_LEVELS, np.float32)
        paths["summary.npz"] = os.path.join(out, "summary.npz")
    else:
        paths["samples.npz"] = os.path.join(out, "samples.npz")
    np.savez(next(iter(paths.values())), **arrays)
    log(f"wrote {', '.join(f'{k} {v.shape}' for k, v in arrays.items())} to {next(iter(paths.values()))}")

    if geometry is None and max_figures > 0:
        log(f"no figures: signals {shape} have no known geometry (workdir/flow/geometry.npz is missing)")
    elif max_figures > 0:
        count = min(n, max_figures)
        firsts = np.concatenate(shown_samples)[:count]
        shown = jax.vmap(lambda op, yy: op.pinv(yy) if hasattr(op, "pinv") else yy)(take(ops, slice(0, count)),
                                                                                    y[:count])
        if summary:
            mean, std = arrays["mean"][:count], arrays["std"][:count]
        else:
            mean, std = arrays["samples"][:count].mean(axis=1), arrays["samples"][:count].std(axis=1)
        for i in range(count):
            rows = [("y", np.clip(np.asarray(shown[i : i + 1]), 0, 1))] if shown.shape[1:] == tuple(shape) else []
            rows += [("samples", np.clip(firsts[i], 0, 1)), ("mean", np.clip(mean[i : i + 1], 0, 1)),
                     ("std", std[i : i + 1])]
            name = f"figures/measurement_{i:04d}.png"
            paths[name] = save_dataset_figure(os.path.join(out, name), geometry, rows)
        log(f"figures of the first {count} measurements in {os.path.join(out, 'figures')}")
    return paths


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    missing = [name for name in ("workdir", "measurements") if getattr(FLAGS, name) is None]
    try:
        if missing:
            raise ValueError(f"missing {', '.join('--' + m for m in missing)}")
        sample_file(
            FLAGS.workdir, FLAGS.measurements, num_samples=FLAGS.num_samples, out=FLAGS.out, summary=FLAGS.summary,
            batch_size=FLAGS.batch_size, seed=FLAGS.seed, mask_file=FLAGS.mask, max_figures=FLAGS.max_figures,
            step=FLAGS.step, operator=None if FLAGS.config is None else FLAGS.config.operator.to_dict(),
            refine_steps=FLAGS.refine_steps, refine_lr=FLAGS.refine_lr,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def console_main():
    """Entry point of the `apd-sample` console script."""
    app.run(main)
