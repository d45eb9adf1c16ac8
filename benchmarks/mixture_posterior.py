"""A multimodal exact posterior: Gaussian-mixture prior on d = 8, a dense random 2 x 8 matrix, noise std 0.05.

    python benchmarks/mixture_posterior.py                                      # the defaults below
    python benchmarks/mixture_posterior.py --steps 500 --num_test 4 --samples 64    # a quick smoke run

Problem (fixed by --seed): M (2, 8) with N(0, 1/8) entries; four components with weights 0.4, 0.3, 0.2, 0.1
whose means sit at 0.5 plus the corners of a regular tetrahedron of radius 0.3 in the null space of M (every
pair 0.49 apart) plus a N(0, 0.1^2) offset in the range of M, and covariances 0.05^2 (B B^T / 16 + I / 2),
B (8, 8) standard normal. The measurement sees the components' null-space offsets not at all and their range
offsets through the noise, so a typical posterior keeps two or three well-separated modes.

Exact posterior: GaussianMixturePrior.posterior (closed form, float64), sampled directly. APD is trained as in
gaussian_posterior.py: the exact prior score in the ELBO, training measurements y = M x + n with x drawn
from the prior (--anneal_steps > 0 ramps the data weight up from 0 instead). On --num_test held-out
measurements each method draws K = --samples samples, compared with K exact samples by
  sw       sliced Wasserstein-2 distance (apd.eval.metrics.sliced_wasserstein, 128 directions), beside the
           noise floor: the distance between two independent exact sample sets of size K;
  tv       total variation between the method's component masses (each sample assigned to the component of
           highest responsibility p(k | x), which equals p(k | x, y)) and the exact posterior weights;
  dropped  components holding > 5% of the exact posterior mass that get < 1% of the method's samples;
  mean_component_mass  the method's mass per component, averaged over measurements (beside the exact weights);
  kl_nats  (APD only) KL(q(.|y) || p(.|y)), Monte Carlo over its K samples with the flow's exact log-density;
each averaged over measurements with a 95% bootstrap interval. Writes --out (JSON) and prints a table.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from apd import flows
from apd.baselines import get_baseline
from apd.eval.metrics import bootstrap_ci, sliced_wasserstein
from apd.evaluation import MeasurementSet, run_baseline
from apd.flows import ConditionalRealNVP
from apd.measurements import measure, split_key
from apd.objective import (
    PRIOR_GRADIENTS, apd_loss, apd_terms, data_weight_schedule, estimator_options, forward_kl_loss, repeat_batch,
)
from apd.operators import Matrix, OperatorFamily, broadcast_operator
from apd.optim import apply_gradients, init_train_state, make_optimizer
from apd.priors import GaussianMixturePrior

DIM, ROWS = 8, 2
WEIGHTS = (0.4, 0.3, 0.2, 0.1)
RADIUS, RANGE_OFFSET, COMPONENT_STD = 0.3, 0.1, 0.05
MAJOR, PRESENT, NUM_DIRECTIONS = 0.05, 0.01, 128
TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
BASELINE_SETTINGS = {  # defaults, but C-PiGDM in its noise-aware (first-order) form since noise_std > 0
    "dps": {},
    "mcg": {},
    "pigdm": {},
    "cpigdm": {"first_order_noise": True},
    "ddrm": {},
    "reddiff": {},
}


def make_problem(noise_std: float, seed: int):
    """(GaussianMixturePrior on signals (8, 1), Matrix operator (2 x 8)) as described in the module docstring."""
    rng = np.random.RandomState(seed)
    matrix = rng.randn(ROWS, DIM) / np.sqrt(DIM)
    _, _, vt = np.linalg.svd(matrix)
    range_basis, null_basis = vt[:ROWS].T, vt[ROWS:].T
    rotation = np.linalg.qr(rng.randn(DIM - ROWS, 3))[0]  # a random 3-D subspace of the null space
    means = 0.5 + RADIUS * TETRAHEDRON @ rotation.T @ null_basis.T
    means += RANGE_OFFSET * rng.randn(len(WEIGHTS), ROWS) @ range_basis.T
    b = rng.randn(len(WEIGHTS), DIM, DIM)
    covs = COMPONENT_STD**2 * (np.einsum("kij,klj->kil", b, b) / (2 * DIM) + 0.5 * np.eye(DIM))
    prior = GaussianMixturePrior.create(WEIGHTS, means, covs, signal_shape=(DIM, 1))
    return prior, Matrix.create(matrix, noise_std, (DIM, 1))


def train_apd(prior, op, args):
    """(flow, EMA parameters, wall seconds) after args.forward_kl_steps steps of maximum likelihood on simulated
    pairs (prior draws, measured by op), then args.steps APD steps on fresh prior draws measured by op."""
    ops = broadcast_operator(op, args.batch)
    flow = ConditionalRealNVP((DIM, 1), num_couplings=args.couplings, width=args.width, depth=2)
    total = args.forward_kl_steps + args.steps
    schedule = dict(lr=args.lr, warmup_steps=200, grad_clip=1.0, cosine_decay=True, num_steps=total)
    tx = make_optimizer(ConfigDict(schedule))
    params = flow.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, DIM, 1)), jnp.zeros((1, ROWS)))["params"]
    state = init_train_state(params, tx, split_key(args.seed, "train"))

    @jax.jit
    def step(state):
        rng, kx, ky, kl = jax.random.split(state["rng"], 4)
        x = prior.sample(kx, args.batch)
        y = jax.vmap(lambda o, k, xx: o.measure(k, xx))(ops, jax.random.split(ky, args.batch), x)
        weight = data_weight_schedule(state["step"] - args.forward_kl_steps, args.anneal_steps)

        def loss_fn(p):
            return jax.lax.cond(
                state["step"] < args.forward_kl_steps,
                lambda: forward_kl_loss(flow, p, ops, y, x),
                lambda: apd_loss(apd_terms(flow, p, prior, ops, y, kl, num_z=args.num_z, **estimator_options(args)),
                                 weight),
            )

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        return apply_gradients(state, grads, tx, 0.999, rng), loss

    start = time.perf_counter()
    for _ in tqdm(range(total), desc="APD flow"):
        state, loss = step(state)
    jax.block_until_ready(loss)
    return flow, state["ema_params"], time.perf_counter() - start


def apd_samples(flow, params, mset: MeasurementSet, num_samples: int, key):
    """(samples (N, K, 8, 1), log q(x | y) (N, K), wall seconds of the batched draw after compilation)."""
    cond = repeat_batch(jax.vmap(flows.condition_of)(mset.ops, mset.y), num_samples)
    draw = jax.jit(lambda k: flows.sample_and_log_prob(flow, params, k, cond))
    jax.block_until_ready(draw(key))
    start = time.perf_counter()
    x, log_q = jax.block_until_ready(draw(key))
    seconds = time.perf_counter() - start
    n = mset.y.shape[0]
    return np.asarray(x).reshape((n, num_samples, DIM, 1)), np.asarray(log_q).reshape(n, num_samples), seconds


def effective_settings(name: str, overrides: dict) -> dict:
    """The settings baseline `name` runs with: its Settings fields or solve() keyword defaults, then overrides."""
    module = get_baseline(name)
    if hasattr(module, "Settings"):
        return module.Settings(**overrides)._asdict()
    params = inspect.signature(module.solve).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY} | overrides


def exact_reference(prior, op, y, num_samples: int, seed: int):
    """Exact posteriors of the measurements y (N, 2), their weights (N, 4), and two independent exact sample
    sets [(K, 8, 1)] * N: the reference and the one that sets the noise floor."""
    matrix = np.asarray(op.matrix, np.float64)
    posteriors = [prior.posterior(matrix, np.asarray(y_i), op.noise_std) for y_i in y]
    weights = np.stack([np.exp(np.asarray(p.log_weights, np.float64)) for p in posteriors])
    weights /= weights.sum(axis=1, keepdims=True)  # exactly 1 after the float32 log-weights

    def draw(name):
        return [np.asarray(p.sample(jax.random.fold_in(split_key(seed, name), i), num_samples))
                for i, p in enumerate(posteriors)]

    return posteriors, weights, draw("exact"), draw("exact_again")


def summary(values) -> dict:
    low, high = bootstrap_ci(values)
    return {"mean": float(np.mean(values)), "ci95": [low, high]}


def scores(samples, exact: list[np.ndarray], posteriors, weights: np.ndarray) -> dict:
    """Per-measurement sw, tv, dropped (each (N,)) and component masses (N, C) of samples (N, K, *S) against
    the exact reference."""
    sw, tv, dropped, masses = [], [], [], []
    for x, ref, post, w in zip(samples, exact, posteriors, weights):
        sw.append(sliced_wasserstein(x, ref, NUM_DIRECTIONS))
        labels = np.argmax(np.asarray(post.responsibilities(jnp.asarray(x))), axis=1)
        mass = np.bincount(labels, minlength=len(w)) / len(labels)
        tv.append(0.5 * np.abs(mass - w).sum())
        dropped.append(float(np.sum((w > MAJOR) & (mass < PRESENT))))
        masses.append(mass)
    return {"sw": np.array(sw), "tv": np.array(tv), "dropped": np.array(dropped), "mass": np.array(masses)}


def apd_notes(methods: dict, major_components: float) -> list[str]:
    """Where an iterative sampler beats APD (95% intervals apart), and APD's dropped modes."""
    apd = methods["apd"]
    notes = [
        f"{name} beats APD on {metric}: {m[metric]['mean']:.4f} vs {apd[metric]['mean']:.4f}"
        for name, m in methods.items() if name != "apd" for metric in ("sw", "tv")
        if m[metric]["ci95"][1] < apd[metric]["ci95"][0]
    ]
    notes.append(f"APD drops on average {apd['dropped']['mean']:.2f} of the {major_components:.2f} components "
                 "with > 5% exact posterior mass")
    notes.append(f"APD's mean component masses {apd['mean_component_mass']} (exact weights: see problem)")
    if "reddiff" in methods:
        notes.append("RED-diff returns one optimised point per run: its K runs spread only through the optimiser's "
                     "noise, not through a model of the posterior")
    if "mcg" in methods:
        notes.append("MCG projects onto A x = y (noisy y): the measurement noise is copied into every sample")
    return notes


def print_table(result: dict) -> None:
    print(f"\nmean components with > 5% exact mass: {result['problem']['mean_components_over_5pct']:.2f}\n")
    print("| method | SW2 [95% CI] | SW2 / floor | component TV [95% CI] | dropped | NFE | s / measurement |")
    print("|---|---|---|---|---|---|---|")
    floor = result["noise_floor"] | {"sw_ratio_to_floor": 1.0, "nfe": "-", "seconds_per_measurement": "-"}
    for name, m in [("exact (floor)", floor)] + list(result["methods"].items()):
        sw, tv = m["sw"], m["tv"]
        print(f"| {name} | {sw['mean']:.4f} [{sw['ci95'][0]:.4f}, {sw['ci95'][1]:.4f}] | {m['sw_ratio_to_floor']:.2f} "
              f"| {tv['mean']:.3f} [{tv['ci95'][0]:.3f}, {tv['ci95'][1]:.3f}] | {m['dropped']['mean']:.2f} "
              f"| {m['nfe']} | {m['seconds_per_measurement']} |")
    kl = result["methods"]["apd"]["kl_nats"]
    print(f"\nAPD KL(q || p): {kl['mean']:.2f} nats [{kl['ci95'][0]:.2f}, {kl['ci95'][1]:.2f}]")
    print("\n".join(f"- {n}" for n in result["notes"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise_std", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num_z", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--elbo_draws", type=int, default=1)
    parser.add_argument("--prior_gradient", choices=PRIOR_GRADIENTS, default="elbo")
    parser.add_argument("--score_time", type=float, default=0.01, help="with --prior_gradient score")
    parser.add_argument("--path_gradient", action="store_true", help="entropy gradient through x only")
    parser.add_argument("--anneal_steps", type=int, default=0, help="data weight ramp 0 -> 1 over these steps")
    parser.add_argument("--forward_kl_steps", type=int, default=0,
                        help="maximum-likelihood steps on simulated (prior sample, y) pairs before the APD steps")
    parser.add_argument("--baselines", default=",".join(BASELINE_SETTINGS), help="comma-separated, or 'none'")
    parser.add_argument("--couplings", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num_test", type=int, default=20)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/mixture_posterior.json")
    args = parser.parse_args()
    names = [] if args.baselines == "none" else args.baselines.split(",")
    unknown = sorted(set(names) - set(BASELINE_SETTINGS))
    if unknown:
        raise SystemExit(f"unknown baselines {unknown}; known: {sorted(BASELINE_SETTINGS)}")

    prior, op = make_problem(args.noise_std, args.seed)
    x_true = prior.sample(split_key(args.seed, "test/x"), args.num_test)
    family = OperatorFamily(lambda key: op, (DIM, 1))
    ops, y = measure(family, split_key(args.seed, "test"), x_true, jnp.arange(args.num_test))
    mset = MeasurementSet("test", None, x_true, ops, y)
    posteriors, weights, exact, exact_again = exact_reference(prior, op, y, args.samples, args.seed)

    flow, params, train_seconds = train_apd(prior, op, args)
    samples, log_q, seconds = apd_samples(flow, params, mset, args.samples, split_key(args.seed, "eval/apd"))
    runs = {"apd": (samples, 1, seconds / args.num_test)}
    apd_kl = [np.mean(lq - np.asarray(p.log_prob(jnp.asarray(x)))) for x, lq, p in zip(samples, log_q, posteriors)]
    for name in tqdm(names, desc="baselines"):
        key = split_key(args.seed, f"eval/{name}")
        run = run_baseline(name, prior, mset, args.samples, BASELINE_SETTINGS[name], key)
        runs[name] = (run.samples, run.nfe, run.seconds[args.samples])

    floor = scores(exact_again, exact, posteriors, weights)
    methods = {}
    for name, (samples, nfe, seconds) in runs.items():
        s = scores(samples, exact, posteriors, weights)
        methods[name] = {
            "sw": summary(s["sw"]),
            "sw_ratio_to_floor": float(np.mean(s["sw"]) / np.mean(floor["sw"])),
            "tv": summary(s["tv"]),
            "dropped": summary(s["dropped"]),
            "mean_component_mass": np.round(s["mass"].mean(axis=0), 3).tolist(),
            "nfe": nfe,
            "seconds_per_measurement": round(seconds, 4),
            "settings": effective_settings(name, BASELINE_SETTINGS[name]) if name in BASELINE_SETTINGS else {},
        }
    methods["apd"]["kl_nats"] = summary(apd_kl)
    major = np.sum(weights > MAJOR, axis=1)
    result = {
        "problem": {
            "dim": DIM,
            "rows": ROWS,
            "noise_std": args.noise_std,
            "prior_weights": list(WEIGHTS),
            "tetrahedron_radius_in_null_space": RADIUS,
            "range_offset_std": RANGE_OFFSET,
            "component_std": COMPONENT_STD,
            "singular_values": np.asarray(op.singular_values())[:ROWS, 0].tolist(),
            "mean_components_over_5pct": float(np.mean(major)),
            "components_over_5pct_histogram": np.bincount(major, minlength=len(WEIGHTS) + 1).tolist(),
            "mean_exact_posterior_weights": np.round(weights.mean(axis=0), 3).tolist(),
        },
        "settings": {
            "steps": args.steps, "batch": args.batch, "num_z": args.num_z, "lr": args.lr,
            "anneal_steps": args.anneal_steps, "forward_kl_steps": args.forward_kl_steps,
            "estimator": estimator_options(args),
            "flow": {"couplings": args.couplings, "width": args.width, "depth": 2},
            "num_test": args.num_test, "samples": args.samples, "seed": args.seed,
            "sw_directions": NUM_DIRECTIONS, "bootstrap": "percentile, 2000 resamples of the measurements",
            "baselines": {name: BASELINE_SETTINGS[name] for name in names},
        },
        "train_seconds": round(train_seconds, 1),
        "noise_floor": {"sw": summary(floor["sw"]), "tv": summary(floor["tv"]), "dropped": summary(floor["dropped"])},
        "methods": methods,
        "notes": apd_notes(methods, float(np.mean(major))),
        "device": jax.devices()[0].device_kind,
        "command": "python benchmarks/mixture_posterior.py " + " ".join(
            f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(args).items() if v is not False),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print_table(result)


if __name__ == "__main__":
    main()
