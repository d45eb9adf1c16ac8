"""Quality against time of semi-amortized inference: the trained APD flow refined on each measurement by N steps of
its objective before sampling (apd.refine; ../shared/POSTERIOR_GAP.md, lever 9), for several N.

    python benchmarks/refine_curve.py --config configs/digits_denoise.py --workdir runs/digits_denoise \
        --num_measurements 32 --steps 0,25,50,100,200 [--lr 1e-4] [--out runs/digits_denoise/refine_curve.json]

Measurements: the first --num_measurements signals of --split, measured as evaluate.py does
(apd.evaluation.measurement_set), with the keys of evaluate.py's 'apd_refined' row for every N (N = 0 is the
trained flow itself). Per N: mean PSNR of one sample and of the mean of --samples samples (clipped to [0, 1])
against the clean signals, with 95% bootstrap intervals over measurements; wall seconds per measurement for the
refinement and the --samples samples (after compilation); NFE, the refinement's score evaluations per
measurement. Written to --out as JSON and printed as a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from apd import refine
from apd.data import load_dataset
from apd.evaluation import APD_REFINED, SPLITS, measurement_set, method_rows, run_apd_refined
from apd.measurements import split_key
from apd.sampler import load_sampler
from apd.training.prior import load_prior

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.tune_baseline import load_config  # noqa: E402


def check_args(args) -> list[int]:
    """The step counts of --steps ('0,25,50' -> [0, 25, 50]); ValueError (one line) for a bad setting."""
    try:
        steps = sorted({int(part) for part in args.steps.split(",")})
    except ValueError:
        raise ValueError(f"--steps must be comma-separated whole numbers, got {args.steps!r}") from None
    for n in steps:
        refine.check(n, args.lr)
    if min(args.num_measurements, args.samples) < 1:
        raise ValueError(f"--num_measurements and --samples must be at least 1, got {args.num_measurements}, "
                         f"{args.samples}")
    if not os.path.isfile(args.config):
        raise ValueError(f"config file {args.config} not found")
    return steps


def curve_row(steps: int, run, truth, samples: int) -> dict:
    """One line of the curve: PSNR of the first sample and of the mean of `samples` (evaluate.py's rows, with
    their intervals), seconds per measurement and NFE."""
    row = {"steps": steps}
    for scored in method_rows(run, truth, False, False, (1, samples))[0]:
        k = scored["samples"]
        row.update({f"psnr_x{k}": scored["psnr"], f"psnr_x{k}_ci95": scored["psnr_ci95"]})
    return {**row, "seconds_per_measurement": run.seconds[samples], "nfe": run.nfe}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--num_measurements", type=int, default=32)
    parser.add_argument("--samples", type=int, default=32, help="K of the mean-of-K PSNR")
    parser.add_argument("--steps", default="0,25,50,100,200", help="refinement step counts, comma-separated")
    parser.add_argument("--lr", type=float, default=refine.LR, help="Adam learning rate of the refinement")
    parser.add_argument("--out", default=None, help="JSON file (default: <workdir>/refine_curve.json)")
    args = parser.parse_args()
    try:
        run(args, check_args(args))
    except (ValueError, OSError) as err:
        sys.exit(f"error: {err}")


def run(args, steps: list[int]) -> None:
    """Refine, sample and score for every step count; print the table and write the JSON."""
    config = load_config(args.config)
    dataset = load_dataset(config.data)
    mset = measurement_set(config, dataset, args.split, args.num_measurements)
    sampler, prior = load_sampler(args.workdir), load_prior(args.workdir)
    trained, asked = (json.loads(json.dumps(c.operator.to_dict())) for c in (sampler.config, config))
    if trained != asked:
        raise ValueError(f"the flow in {args.workdir} was trained for operator {trained}, the config asks for {asked}")
    key = split_key(config.seed, f"eval/{APD_REFINED}")
    counts = tuple(sorted({1, args.samples}))
    rows = []
    print(f"| steps | PSNR x1 | PSNR x{args.samples} | s / meas. | NFE |\n|---|---|---|---|---|", flush=True)
    for n in steps:
        row = curve_row(n, run_apd_refined(sampler, prior, mset, counts, key, n, args.lr), mset.x, args.samples)
        rows.append(row)
        print(f"| {n} | {row['psnr_x1']:.2f} | {row[f'psnr_x{args.samples}']:.2f} | "
              f"{row['seconds_per_measurement']:.3g} | {row['nfe']} |", flush=True)
    record = {
        "command": shlex.join(["python"] + sys.argv),
        "workdir": args.workdir,
        "flow_step": sampler.step,
        "split": args.split,
        "num_measurements": int(mset.x.shape[0]),
        "samples": args.samples,
        "lr": args.lr,
        "batch_size": refine.BATCH_SIZE,
        "rows": rows,
    }
    out = args.out or os.path.join(args.workdir, "refine_curve.json")
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
