"""Exactness of APD on a known posterior: an exact Gaussian prior, inpainting, the closed-form posterior.

    python benchmarks/gaussian_posterior.py                       # d = 64, half the entries hidden, s = 0.1
    python benchmarks/gaussian_posterior.py --dim 16 --steps 2000

Trains the amortized flow with the exact prior score (so the only errors are the flow's and the optimiser's),
then reports, averaged over held-out measurements: KL(q(.|y) || p(.|y)) per dimension (Monte Carlo with the
flow's exact log-density and the exact posterior), the error of the posterior mean and std, and the coverage of
the 50/90/95% central credible intervals. Writes a JSON next to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from apd.eval.metrics import coverage
from apd.flows import ConditionalRealNVP, condition_of, normal_log_prob
from apd.objective import PRIOR_GRADIENTS, apd_loss, apd_terms, estimator_options
from apd.operators import Inpaint, broadcast_operator
from apd.priors import GaussianPrior
from apd.optim import apply_gradients, init_train_state, make_optimizer


def make_problem(dim: int, seed: int = 0):
    """A correlated Gaussian prior in [0,1]-like units and a fixed mask hiding every other entry."""
    rng = np.random.RandomState(seed)
    a = rng.randn(dim, dim) / np.sqrt(dim)
    cov = 0.02 * a @ a.T + 0.01 * np.eye(dim)
    prior = GaussianPrior.create(0.5 + 0.1 * rng.randn(dim), cov, signal_shape=(dim, 1))
    mask = (np.arange(dim) % 2 == 0).astype(np.float32).reshape(dim, 1)
    return prior, mask


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--noise_std", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num_z", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--elbo_draws", type=int, default=1)
    parser.add_argument("--prior_gradient", choices=PRIOR_GRADIENTS, default="elbo")
    parser.add_argument("--score_time", type=float, default=0.01, help="with --prior_gradient score")
    parser.add_argument("--path_gradient", action="store_true", help="entropy gradient through x only")
    parser.add_argument("--num_test", type=int, default=50)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--out", default="docs/results/gaussian_posterior.json")
    args = parser.parse_args()

    prior, mask = make_problem(args.dim)
    op = Inpaint(jnp.asarray(mask), args.noise_std)
    ops = broadcast_operator(op, args.batch)
    flow = ConditionalRealNVP((args.dim, 1), num_couplings=8, width=256, depth=2)
    tx = make_optimizer(ConfigDict(dict(lr=args.lr, warmup_steps=200, grad_clip=1.0, cosine_decay=True, num_steps=args.steps)))
    params = flow.init(jax.random.PRNGKey(0), jnp.zeros((1, args.dim, 1)), jnp.zeros((1, args.dim, 1)))["params"]
    state = init_train_state(params, tx, jax.random.PRNGKey(1))

    @jax.jit
    def step(state):
        rng, kx, ky, kl = jax.random.split(state["rng"], 4)
        x = prior.sample(kx, args.batch)  # fresh training signals and measurements from the prior
        y = jax.vmap(lambda o, k, xx: o.measure(k, xx))(ops, jax.random.split(ky, args.batch), x)
        def loss_fn(p):
            return apd_loss(apd_terms(flow, p, prior, ops, y, kl, num_z=args.num_z, **estimator_options(args)))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        return apply_gradients(state, grads, tx, 0.999, rng), loss

    start = time.perf_counter()
    for _ in tqdm(range(args.steps), desc="flow"):
        state, loss = step(state)
    train_seconds = time.perf_counter() - start

    x_true = prior.sample(jax.random.PRNGKey(123), args.num_test)
    y = jax.vmap(lambda k, xx: op.measure(k, xx))(jax.random.split(jax.random.PRNGKey(124), args.num_test), x_true)
    draw = jax.jit(lambda p, z, c: flow.apply({"params": p}, z, c))
    a = np.diag(mask[:, 0].astype(np.float64))
    kls, mean_err, std_err, samples = [], [], [], []
    for i in range(args.num_test):
        z = jax.random.normal(jax.random.PRNGKey(1000 + i), (args.samples, args.dim, 1))
        cond = jax.vmap(condition_of, in_axes=(None, 0))(op, jnp.repeat(y[i : i + 1], args.samples, axis=0))
        x, logdet = draw(state["ema_params"], z, cond)  # the condition training used: y and its estimate
        post = prior.posterior(a, np.asarray(y[i, :, 0]), args.noise_std)
        kls.append(float(jnp.mean(normal_log_prob(z) - logdet - post.log_prob(x))))
        mean_err.append(float(jnp.sqrt(jnp.mean((jnp.mean(x, 0)[:, 0] - post.mean) ** 2))))
        std_err.append(float(jnp.sqrt(jnp.mean((jnp.std(x, 0)[:, 0] - jnp.sqrt(jnp.diag(post.cov))) ** 2))))
        samples.append(x)
    cover = coverage(jnp.stack(samples), x_true, levels=(0.5, 0.9, 0.95))
    result = {
        "dim": args.dim,
        "noise_std": args.noise_std,
        "hidden_fraction": 0.5,
        "steps": args.steps,
        "estimator": estimator_options(args),
        "train_seconds": round(train_seconds, 1),
        "kl_per_dim": float(np.mean(kls) / args.dim),
        "posterior_mean_rmse": float(np.mean(mean_err)),
        "posterior_std_rmse": float(np.mean(std_err)),
        "coverage": {"50%": float(cover[0]), "90%": float(cover[1]), "95%": float(cover[2])},
        "num_test_measurements": args.num_test,
        "samples_per_measurement": args.samples,
        "command": "python benchmarks/gaussian_posterior.py " + " ".join(
            f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(args).items() if v is not False),
    }
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
