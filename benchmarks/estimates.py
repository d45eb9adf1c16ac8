"""The flow's signal-space estimate x0(y) alone (flow.model.estimate), before any flow: how close each one is to the
truth on held-out measurements of a task, from the trained prior in workdir.

    python benchmarks/estimates.py --config configs/celeba32_deblur_cpu.py --workdir ~/runs/celeba32_deblur_cpu \
        --num_measurements 256 --out docs/results/celeba32_deblur/estimates.json

Estimates: 'pinv' (the operator's own), 'wiener_diagonal' (the Gaussian fit diagonal in the operator's SVD basis,
rho = 1) and 'wiener' (`apd.objective.fit_wiener`, rho chosen on held-out prior samples), both fitted to the output
fit's prior samples (kept in workdir/prior); 'tweedie' too for denoising. The measurements are evaluate.py's (the
first --num_measurements signals of --split); PSNR of each estimate clipped to [0, 1], with 95% bootstrap intervals.
Clean signals only score the estimates; the estimates use the prior and the operator alone.
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

from apd.data import load_dataset
from apd.eval.metrics import bootstrap_ci, psnr
from apd.evaluation import measurement_set
from apd.objective import as_estimate, conditions, fit_wiener
from apd.operators import Denoise, make_operator_family
from apd.training.flow import FIT_PAIRS, fit_prior_samples
from apd.training.prior import load_prior, prior_dir

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.tune_baseline import load_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--num_measurements", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    dataset = load_dataset(config.data)
    prior = load_prior(args.workdir)
    family = make_operator_family(config.operator, dataset.signal_shape)
    mset = measurement_set(config, dataset, args.split, args.num_measurements)
    operator = family.draw(jax.random.PRNGKey(0))
    samples = jnp.asarray(fit_prior_samples(config.seed, prior, FIT_PAIRS, prior_dir(args.workdir)))
    estimates = {"pinv": "pinv"}
    estimates["wiener_diagonal"], _ = fit_wiener(operator, samples, shrinkage=(1.0,))
    estimates["wiener"], rho = fit_wiener(operator, samples)
    if isinstance(operator, Denoise):
        estimates["tweedie"] = "tweedie"
    table = {}
    for name, estimate in estimates.items():
        x0 = jax.jit(conditions)(mset.ops, mset.y, prior, as_estimate(estimate)).estimate
        values = np.asarray(psnr(jnp.clip(x0, 0, 1), mset.x))
        table[name] = {"psnr": float(values.mean()), "psnr_ci95": bootstrap_ci(values)}
        print(f"{name}: {values.mean():.2f} dB {bootstrap_ci(values)}", flush=True)
    record = {"command": shlex.join(["python"] + sys.argv), "split": args.split,
              "num_measurements": int(mset.x.shape[0]), "prior_samples": FIT_PAIRS, "wiener_rho": rho,
              "estimates": table}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
