"""The flow's start under each output fit (flow.training.fit_output = prior | data | none), on validation
measurements, before any training step: does fitting to prior samples lose anything against clean data?

    python benchmarks/output_fit.py --config configs/bunny_mnist_inpaint.py --workdir runs/bunny_mnist_inpaint \
        --out docs/results/bunny_mnist_inpaint/output_fit.json

Needs only the trained prior in workdir. Reports the mean PSNR of one sample and of the mean of --samples
samples (clipped to [0, 1]) with 95% bootstrap intervals, and the paired difference prior minus data.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np

from apd import flows
from apd.data import load_dataset
from apd.eval.metrics import bootstrap_ci, psnr
from apd.evaluation import measurement_set
from apd.operators import make_operator_family
from apd.sampler import Sampler
from apd.training.flow import FIT_OUTPUT_MODES, start_params, task_estimate
from apd.training.prior import load_prior

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.tune_baseline import load_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_measurements", type=int, default=64)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    dataset = load_dataset(config.data)
    prior = load_prior(args.workdir)
    flow = flows.make_flow(config.flow.model, dataset.signal_shape)
    family = make_operator_family(config.operator, dataset.signal_shape)
    mset = measurement_set(config, dataset, "val", args.num_measurements)
    estimate, _ = task_estimate(config, family, prior)
    per_mode, table = {}, {}
    for mode in FIT_OUTPUT_MODES:
        config.flow.training.fit_output = mode
        sampler = Sampler(flow, start_params(config, flow, family, prior, dataset.train, estimate=estimate), family,
                          config, step=0, prior=prior, estimate=estimate)
        x = sampler.sample(mset.y, args.samples, jax.random.PRNGKey(0), operator=mset.ops if sampler.needs_operator else None)
        one = np.asarray(psnr(jnp.clip(x[:, 0], 0, 1), mset.x))
        mean = np.asarray(psnr(jnp.clip(jnp.mean(x, 1), 0, 1), mset.x))
        per_mode[mode] = (one, mean)
        table[mode] = {"psnr_x1": float(one.mean()), "psnr_x1_ci95": bootstrap_ci(one),
                       f"psnr_x{args.samples}": float(mean.mean()), f"psnr_x{args.samples}_ci95": bootstrap_ci(mean)}
        print(f"{mode}: start val PSNR x1 {one.mean():.2f}, x{args.samples} {mean.mean():.2f} dB", flush=True)
    diff = per_mode["prior"][1] - per_mode["data"][1]
    record = {
        "command": shlex.join(["python"] + sys.argv),
        "split": "val",
        "num_measurements": int(mset.x.shape[0]),
        "samples": args.samples,
        "modes": table,
        f"prior_minus_data_x{args.samples}": {"psnr_diff": float(diff.mean()), "psnr_diff_ci95": bootstrap_ci(diff)},
    }
    print(f"prior minus data (x{args.samples}): {diff.mean():+.2f} dB {bootstrap_ci(diff)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
