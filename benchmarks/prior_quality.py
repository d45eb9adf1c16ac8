"""How good is a trained prior? Its likelihood bound in bits per dimension and its denoising loss on held-out
signals, and a grid of its samples.

    python benchmarks/prior_quality.py --config configs/digits_denoise.py --workdir runs/digits_denoise \
        --out docs/results/digits_denoise/prior_quality.json

bits/dim = -ELBO / (d ln 2) (apd/elbo.py, every constant kept) of the signals as the prior models them, a
continuous density on [0, 1]; for data quantised to L levels, x = (level + u) / L, add log2(L) to compare with
discrete figures (8-bit images: + 8). Lower is better; the bound is an upper bound on the true -log2 p(x) / d. ELBO draws per signal are added
until the Monte-Carlo part of the 95% interval (over draws) is below --tolerance; the interval over signals
is reported beside it (it measures which signals were drawn, not the estimator). The DSM loss is the
training loss (mean squared eps error, t uniform on [t_min, 1]) averaged over --dsm_draws draws per signal.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from apd.data import load_dataset
from apd.elbo import elbo
from apd.eval.figures import save_dataset_figure
from apd.eval.metrics import bootstrap_ci
from apd.training.prior import dsm_loss, load_prior

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.tune_baseline import load_config  # noqa: E402


def bits_per_dim(
    prior, signals: np.ndarray, key: jax.Array, tolerance: float, batch: int, max_rounds: int, draws_per_round: int
):
    """(per-signal mean bits/dim (N,), Monte-Carlo 95% half-width of their mean, draws per signal).

    Each round averages `draws_per_round` more (t, e) draws per signal, stratified in t; rounds are independent,
    so their spread measures the estimator. The Monte-Carlo half-width is
    1.96 * sqrt(mean over signals of the variance between rounds / (N * rounds)): it leaves out how signals
    differ from one another. Stops once it is below `tolerance` (after at least two rounds) or after max_rounds.
    """
    d = math.prod(signals.shape[1:])
    bound = jax.jit(lambda x, k: elbo(prior, x, k, num_draws=draws_per_round))
    rounds = []
    with tqdm(total=max_rounds, desc="ELBO rounds") as bar:
        for r in range(max_rounds):
            round_key = jax.random.fold_in(key, r)
            values = [
                np.asarray(bound(jnp.asarray(signals[i : i + batch]), jax.random.fold_in(round_key, i)))
                for i in range(0, len(signals), batch)
            ]
            rounds.append(-np.concatenate(values) / (d * math.log(2)))
            draws = np.stack(rounds)  # (R, N)
            half_width = 1.96 * math.sqrt(float(draws.var(axis=0, ddof=1).mean()) / draws.size) if r else math.inf
            bar.update()
            bar.set_postfix(bpd=f"{draws.mean():.4f}", half_width=f"{half_width:.4f}")
            if r >= 1 and half_width < tolerance:
                break
    return draws.mean(axis=0), half_width, len(rounds) * draws_per_round


def mean_dsm_loss(prior, signals: np.ndarray, key: jax.Array, draws: int, batch: int) -> float:
    """The DSM training loss (t uniform on [t_min, 1]) averaged over `draws` (t, noise) per signal."""
    sde = prior.sde

    @jax.jit
    def loss(x, k):
        k_t, k_n = jax.random.split(k)
        t = jax.random.uniform(k_t, (x.shape[0],), minval=sde.t_min, maxval=1.0)
        return dsm_loss(prior.eps, sde, x, t, jax.random.normal(k_n, x.shape))

    total, count = 0.0, 0
    for j in range(draws):
        for i in range(0, len(signals), batch):
            x = jnp.asarray(signals[i : i + batch])
            total += float(loss(x, jax.random.fold_in(jax.random.fold_in(key, j), i))) * len(x)
            count += len(x)
    return total / count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--num_signals", type=int, default=256, help="held-out signals (all if the split is smaller)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="Monte-Carlo 95%% half-width, bits/dim")
    parser.add_argument("--max_rounds", type=int, default=64)
    parser.add_argument("--draws_per_round", type=int, default=64,
                        help="ELBO draws per signal in one round, stratified in t (apd/elbo.py), so more per round "
                        "cost less variance per draw")
    parser.add_argument("--dsm_draws", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=8, help="prior samples in the figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON to write; the sample figure goes beside it")
    args = parser.parse_args()

    config = load_config(args.config)
    dataset = load_dataset(config.data)
    prior = load_prior(args.workdir)
    signals = np.asarray(getattr(dataset, args.split)[: args.num_signals], np.float32)
    if len(signals) == 0:
        raise SystemExit(f"error: the {args.split} split of {dataset.name} is empty")
    key = jax.random.PRNGKey(args.seed)
    per_signal, mc_half_width, rounds = bits_per_dim(
        prior, signals, jax.random.fold_in(key, 0), args.tolerance, args.batch, args.max_rounds,
        args.draws_per_round,
    )
    dsm = mean_dsm_loss(prior, signals, jax.random.fold_in(key, 1), args.dsm_draws, args.batch)

    bpd = float(per_signal.mean())
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "dataset": dataset.name,
        "split": args.split,
        "num_signals": len(signals),
        "dimensions": math.prod(signals.shape[1:]),
        "prior_model": config.prior.model.to_dict(),
        "prior_steps": int(config.prior.training.num_steps),
        "bits_per_dim": bpd,
        "bits_per_dim_mc_ci95_half_width": mc_half_width,
        "bits_per_dim_signals_ci95": list(bootstrap_ci(per_signal)),
        "elbo_draws_per_signal": rounds,
        "dsm_loss": dsm,
        "dsm_draws_per_signal": args.dsm_draws,
    }
    samples = np.asarray(jax.jit(lambda k: prior.sample(k, args.num_samples))(jax.random.fold_in(key, 2)))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    figure = os.path.splitext(args.out)[0] + "_samples.png"
    save_dataset_figure(figure, dataset, [("held-out signals", signals[: args.num_samples]), ("prior samples", samples)])
    result["figure"] = os.path.basename(figure)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
