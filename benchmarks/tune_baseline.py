"""Tune each baseline's main setting on VALIDATION measurements (never the test ones) of a trained prior.

    python benchmarks/tune_baseline.py --config configs/digits_denoise.py --workdir runs/digits_denoise \
        --baselines dps,mcg,pigdm,cpigdm,ddrm,reddiff --out docs/results/digits_denoise/tuning.json
    python benchmarks/tune_baseline.py ... --baselines dps --values 0.05,0.1,0.25   # one sweep by hand

Each baseline's setting (SWEEPS) is swept over a log-spaced grid; the score of a value is the mean PSNR of
--samples single draws per measurement on the first --num_measurements validation measurements. While the
best value lies at an edge of the grid, the grid is extended past that edge by the grid's own ratio (at
most --max_extensions times), so a chosen value is never at the edge of what was tried unless the
extension budget ran out (then `at_edge` says so). Other settings come from the config's baselines.<name>.
Writes every score to --out and prints the config lines to paste into the task's baselines section.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shlex
import sys

import numpy as np

from apd.data import load_dataset
from apd.eval.metrics import psnr
from apd.evaluation import measurement_set, run_baseline
from apd.measurements import split_key
from apd.training.prior import load_prior

# baseline: (setting, default grid). Grids are log-spaced; steps are in [0,1] signal units (METHODS 1.3).
SWEEPS = {
    "dps": ("zeta", (0.03, 0.1, 0.3, 1.0)),
    "mcg": ("alpha_step", (0.03, 0.1, 0.3, 1.0)),
    "pigdm": ("w", (0.3, 1.0, 3.0)),
    "cpigdm": ("w", (0.3, 1.0, 3.0)),
    "ddrm": ("eta", (0.25, 0.5, 0.85, 1.0)),
    "reddiff": ("lam", (0.06, 0.25, 1.0, 4.0)),
}
UPPER_BOUNDS = {"ddrm": 1.0}  # DDRM's eta is a variance fraction: the grid stops at 1


def load_config(path: str):
    """get_config() of a config file (configs/<task>.py, which imports its siblings from the repository root)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def extend(values: list[float], best: float, upper: float | None) -> float | None:
    """The next value past the edge where `best` lies (grid ratio of that edge), or None if best is inside
    the grid or the upper bound stops it."""
    values = sorted(values)
    if best == values[0]:
        return values[0] * values[0] / values[1] if len(values) > 1 else values[0] / 3
    if best == values[-1]:
        nxt = values[-1] * values[-1] / values[-2] if len(values) > 1 else values[-1] * 3
        if upper is not None:
            if values[-1] >= upper:
                return None
            nxt = min(nxt, upper)
        return nxt
    return None


def sweep(name, setting, values, prior, mset, fixed, key, samples, max_extensions,
          log=functools.partial(print, flush=True)) -> dict:
    """{'setting', 'values', 'psnr' (mean val PSNR of one draw, per value), 'best', 'at_edge'}."""
    scores = {}

    def score(value):
        run = run_baseline(name, prior, mset, samples, {**fixed, setting: value}, key, timed=False, progress=False)
        truth = np.repeat(np.asarray(mset.x), samples, axis=0)
        draws = np.clip(run.samples.reshape((-1,) + truth.shape[1:]), 0, 1)
        scores[value] = float(np.mean(psnr(draws, truth)))
        log(f"{name} {setting}={value:.4g}: val PSNR {scores[value]:.2f} dB (nfe {run.nfe})")

    for value in values:
        score(float(value))
    for _ in range(max_extensions):
        best = max(scores, key=scores.get)
        nxt = extend(list(scores), best, UPPER_BOUNDS.get(name))
        if nxt is None:
            break
        score(float(nxt))
    best = max(scores, key=scores.get)
    ordered = sorted(scores)
    at_edge = best in (ordered[0], ordered[-1]) and not (best == ordered[-1] and UPPER_BOUNDS.get(name) == best)
    return {"setting": setting, "values": ordered, "psnr": [scores[v] for v in ordered], "best": best, "at_edge": at_edge}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--baselines", default=",".join(SWEEPS), help=f"comma-separated, from {', '.join(SWEEPS)}")
    parser.add_argument("--values", default=None, help="comma-separated grid (one baseline only); default SWEEPS")
    parser.add_argument("--num_measurements", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2, help="draws per measurement scored")
    parser.add_argument("--max_extensions", type=int, default=3)
    parser.add_argument("--out", default=None, help="tuning.json to write (default: print only)")
    args = parser.parse_args()

    names = [n for n in args.baselines.split(",") if n]
    unknown = [n for n in names if n not in SWEEPS]
    if unknown:
        sys.exit(f"error: no sweep for {', '.join(unknown)}; tunable: {', '.join(SWEEPS)}")
    if args.values and len(names) != 1:
        sys.exit("error: --values needs exactly one baseline")
    config = load_config(args.config)
    dataset = load_dataset(config.data)
    prior = load_prior(args.workdir)
    mset = measurement_set(config, dataset, "val", args.num_measurements)
    results = {}
    for name in names:
        setting, grid = SWEEPS[name]
        values = [float(v) for v in args.values.split(",")] if args.values else list(grid)
        fixed = dict(config.get("baselines", {}).get(name, {}))
        fixed.pop(setting, None)
        try:
            results[name] = sweep(name, setting, values, prior, mset, fixed, split_key(config.seed, f"tune/{name}"),
                                  args.samples, args.max_extensions)
        except ValueError as err:
            print(f"{name} left out: {err}")
            results[name] = {"not_applicable": str(err)}
            continue
        results[name]["fixed"] = fixed
    lines = [f"{n}={{'{r['setting']}': {r['best']:.4g}}}" for n, r in results.items() if "best" in r]
    print("best settings (config.baselines):", "; ".join(lines))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        record = {
            "command": shlex.join(["python"] + sys.argv),
            "split": "val",
            "num_measurements": int(mset.x.shape[0]),
            "samples_per_measurement": args.samples,
            "score": "mean PSNR (dB) of single draws clipped to [0, 1]",
            "baselines": results,
        }
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
