"""The prior's own generalization gap on a denoising task: the PSNR of its exact posterior mean (Tweedie,
`apd.priors.base.denoised_mean`) on the first N training signals, with the very measurements the flow trains on
(split_key(seed, 'train')), minus on the first N test signals. A flow whose mean reaches the prior's posterior
mean inherits this gap, so evaluate.py's APD gap minus it is the flow's own.

    python benchmarks/prior_gap.py --config configs/digits_denoise.py --workdir runs/digits_denoise
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax.numpy as jnp

from apd.data import load_dataset
from apd.eval.metrics import bootstrap_ci, psnr
from apd.measurements import measure, split_key
from apd.operators import make_operator_family
from apd.priors.base import denoised_mean
from apd.training.prior import load_prior

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.tune_baseline import load_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_measurements", type=int, default=128)
    args = parser.parse_args()
    config = load_config(args.config)
    if config.operator.name != "denoise":
        raise SystemExit(f"prior_gap.py needs a denoising task, not {config.operator.name!r}")
    dataset, prior = load_dataset(config.data), load_prior(args.workdir)
    family = make_operator_family(config.operator, dataset.signal_shape)
    result = {}
    for split in ("train", "test"):
        x = jnp.asarray(getattr(dataset, split)[: args.num_measurements])
        _, y = measure(family, split_key(config.seed, split), x, jnp.arange(x.shape[0]))
        values = psnr(jnp.clip(denoised_mean(prior, y, float(config.operator.noise_std)), 0.0, 1.0), x)
        result[split] = {"noise2score_psnr": float(jnp.mean(values)), "ci95": bootstrap_ci(values),
                         "num_measurements": int(x.shape[0])}
    result["prior_gap_db"] = result["train"]["noise2score_psnr"] - result["test"]["noise2score_psnr"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
