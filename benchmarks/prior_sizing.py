"""Which U-Net width trains the best prior in a fixed wall-clock budget on this machine?

    python benchmarks/prior_sizing.py --config configs/celeba32_cpu.py --widths 16,32,48 --budget_s 240 \
        --out docs/results/priors/celeba32_sizing.json

For each base channel count (the rest of config.prior.model unchanged) the DSM training step of
apd/training/prior.py runs for --budget_s seconds of training (evaluation time excluded); every --eval_every_s
the validation DSM loss of the current (non-EMA) parameters is measured on the first --num_val validation
signals with fixed (t, noise) draws, the same for every width (apd.training.prior.validation_loss_fn). Writes the curves (JSON) and a figure of
validation loss against training seconds beside it. The width whose last validation loss is lowest is the
one to train for the full budget.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from apd.data import load_dataset
from apd.nets import make_score_net
from apd.optim import make_optimizer
from apd.sde import VPSDE
from apd.training.loop import batch_indices
from apd.training.prior import init_prior_state, make_train_step, validation_loss_fn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.tune_baseline import load_config  # noqa: E402


def run_width(config, width: int, train: np.ndarray, val: np.ndarray, args) -> dict:
    """Train config's prior with base_channels = width for args.budget_s seconds; the validation curve."""
    model_cfg = config.prior.model.copy_and_resolve_references()
    model_cfg.base_channels = width
    tcfg = config.prior.training
    sde = VPSDE(**config.prior.sde)
    module = make_score_net(model_cfg, tuple(train.shape[1:]))
    tx = make_optimizer(tcfg)
    state = init_prior_state(module, tx, train.shape[1:], jax.random.PRNGKey(config.seed))
    num_params = int(sum(p.size for p in jax.tree.leaves(state["params"])))
    step_fn = jax.jit(make_train_step(module, sde, tx, tcfg, False), donate_argnums=0)
    val_loss = validation_loss_fn(module, sde, val, jax.random.PRNGKey(args.seed), args.val_draws)
    curve, trained_s, step, next_eval = [], 0.0, 0, args.eval_every_s
    state, _ = step_fn(state, jnp.asarray(train[batch_indices(len(train), config.seed, 0, 0, tcfg.batch_size)]))
    jax.block_until_ready(state)  # compile outside the budget
    step = 1
    while trained_s < args.budget_s:
        start = time.perf_counter()
        state, _ = step_fn(state, jnp.asarray(train[batch_indices(len(train), config.seed, 0, step, tcfg.batch_size)]))
        jax.block_until_ready(state["params"])
        trained_s += time.perf_counter() - start
        step += 1
        if trained_s >= next_eval or trained_s >= args.budget_s:
            curve.append({"seconds": round(trained_s, 1), "step": step, "val_dsm": val_loss(state["params"])})
            print(f"width {width}: {curve[-1]}", flush=True)
            next_eval += args.eval_every_s
    return {"base_channels": width, "num_params": num_params, "seconds_per_step": trained_s / (step - 1), "curve": curve}


def plot_curves(result: dict, path: str) -> None:
    """Validation DSM loss (log scale) against training seconds, one line per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in result["runs"]:
        ax.plot([c["seconds"] for c in r["curve"]], [c["val_dsm"] for c in r["curve"]], marker="o",
                label=f"{r['base_channels']} ch, {r['seconds_per_step']:.2f} s/step")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds (this machine)")
    ax.set_ylabel("validation DSM loss")
    ax.set_title(f"{result['dataset']}: prior width at equal wall time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--widths", default="16,32,48", help="base channel counts, comma-separated")
    parser.add_argument("--budget_s", type=float, default=240.0, help="training seconds per width")
    parser.add_argument("--eval_every_s", type=float, default=60.0)
    parser.add_argument("--num_val", type=int, default=256)
    parser.add_argument("--val_draws", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON to write; the figure goes beside it")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    config = load_config(args.config)
    if config.prior.model.name not in ("unet", "vertex_unet", "grid_unet"):
        raise SystemExit(f"error: {args.config} has a {config.prior.model.name!r} prior; sizing varies a U-Net's base_channels")
    dataset = load_dataset(config.data)
    train = np.asarray(dataset.train, np.float32)
    val = np.asarray(dataset.val[: args.num_val], np.float32)
    if len(val) == 0:
        raise SystemExit(f"error: the validation split of {dataset.name} is empty")
    runs = [run_width(config, w, train, val, args) for w in widths]
    best = min(runs, key=lambda r: r["curve"][-1]["val_dsm"])
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "dataset": dataset.name,
        "model": config.prior.model.to_dict(),
        "batch_size": int(config.prior.training.batch_size),
        "budget_s": args.budget_s,
        "num_val": len(val),
        "val_draws": args.val_draws,
        "device": jax.devices()[0].device_kind,
        "runs": runs,
        "best_base_channels": best["base_channels"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    plot_curves(result, os.path.splitext(args.out)[0] + ".png")
    print(json.dumps({r["base_channels"]: r["curve"][-1] for r in runs}, indent=2))


if __name__ == "__main__":
    main()
