"""Sweep one numeric setting of a baseline on VALIDATION measurements (never the test ones) of a trained prior.

    python benchmarks/tune_baseline.py --config configs/digits_denoise.py --workdir runs/digits_denoise \
        --baseline dps --setting zeta --values 0.05,0.1,0.25,0.5,1

Prints the mean PSNR of one sample per measurement for each value; put the best in the config's
baselines.<name> section, which evaluate.py reads.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import jax.numpy as jnp

from apd.data import load_dataset
from apd.eval.metrics import psnr
from apd.evaluation import measurement_set, run_baseline
from apd.measurements import split_key
from apd.training.prior import load_prior


def load_config(path: str):
    """get_config() of a config file (configs/<task>.py, which imports its siblings from the repository root)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--setting", required=True)
    parser.add_argument("--values", required=True, help="comma-separated numbers")
    parser.add_argument("--num_measurements", type=int, default=8)
    args = parser.parse_args()

    config = load_config(args.config)
    dataset = load_dataset(config.data)
    prior = load_prior(args.workdir)
    mset = measurement_set(config, dataset, "val", args.num_measurements)
    fixed = dict(config.get("baselines", {}).get(args.baseline, {}))
    key = split_key(config.seed, f"tune/{args.baseline}")
    for value in (float(v) for v in args.values.split(",")):
        run = run_baseline(args.baseline, prior, mset, 1, {**fixed, args.setting: value}, key)
        score = float(jnp.mean(psnr(jnp.clip(jnp.asarray(run.samples[:, 0]), 0, 1), mset.x)))
        print(f"{args.baseline} {args.setting}={value:g}: val PSNR {score:.2f} dB (nfe {run.nfe})", flush=True)


if __name__ == "__main__":
    main()
