"""How much slower are the prior network's gradients inside lax.scan than unrolled, with our Conv and flax's?

    python benchmarks/loop_speed.py --config configs/celeba32_cpu.py --out docs/results/loop_speed/loop_speed.json

Every guided sampler (DPS, MCG, PiGDM, C-PiGDM) runs, at each of its steps, x0_hat(x, t) and its VJP inside a
lax.scan; a refinement (apd.refine) takes parameter gradients in one. On CPU, XLA runs the convolutions that
autodiff emits for a convolution's gradients several times slower inside a loop than outside (jax issue #12868);
apd.nets.conv.Conv writes the input gradient as a channels-last forward convolution instead (the kernel gradient
stays autodiff's). For the config's prior network
(random parameters: speed does not depend on them) this times --steps steps on a batch of --batch signals of
(a) the guided step x <- x - 0.01 J^T x0_hat and (b) a gradient step on the parameters of the denoising loss,
inside lax.scan and unrolled (one program without a loop), with apd's Conv and with flax's nn.Conv (the same
parameters), after a warm-up call; --repeats timed calls each, the fastest kept. Prints and writes ms per
signal and step.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd.data import load_dataset
from apd.nets import make_score_net
from apd.nets import unet
from apd.sde import VPSDE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tune_baseline import load_config  # noqa: E402


def flax_conv(features, kernel_size, strides, padding, **kwargs):
    """nn.Conv in the place of apd's Conv (same parameter names and shapes)."""
    return nn.Conv(features, kernel_size, strides=strides, padding=padding, **kwargs)


def guided_steps(net, params, sde, ts, unroll):
    """x (B, *S) -> x after len(ts) steps x <- x - 0.01 * J^T x0_hat(x, t) (the VJP every guided sampler takes)."""

    def x0_hat(x, t):
        tt = jnp.full((x.shape[0],), t)
        return (x - sde.sigma(t) * net.apply({"params": params}, x, tt)) / sde.alpha(t)

    def step(x, t):
        x0, pull = jax.vjp(lambda x_: x0_hat(x_, t), x)
        return x - 0.01 * pull(x0)[0], None

    return jax.jit(lambda x: jax.lax.scan(step, x, ts, unroll=unroll)[0])


def parameter_steps(net, params, sde, ts, unroll):
    """x (B, *S) -> parameters after len(ts) plain gradient steps on the denoising loss at time t (x fixed)."""

    def loss(p, x, t):
        noise = jnp.sin(7.0 * x)  # any fixed array: speed does not depend on it
        x_t = sde.alpha(t) * x + sde.sigma(t) * noise
        return jnp.mean((net.apply({"params": p}, x_t, jnp.full((x.shape[0],), t)) - noise) ** 2)

    def run(x):
        def step(p, t):
            grads = jax.grad(loss)(p, x, t)
            return jax.tree.map(lambda a, g: a - 1e-3 * g, p, grads), None

        return jax.lax.scan(step, params, ts, unroll=unroll)[0]

    return jax.jit(lambda x: jax.tree.leaves(run(x))[0])


def time_ms(fn, x, repeats, rows):
    fn(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a config whose prior network is a U-Net")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = load_config(args.config)
    shape = tuple(load_dataset(config.data).signal_shape)
    net = make_score_net(config.prior.model, shape)
    x = jax.random.normal(jax.random.key(0), (args.batch, *shape))
    params = net.init(jax.random.key(1), x, jnp.full((args.batch,), 0.5))["params"]
    sde, ts = VPSDE(), jnp.linspace(0.9, 0.1, args.steps)
    rows = args.batch * args.steps
    results = {}
    for conv_name, patch in (("apd Conv", unet.Conv), ("flax nn.Conv", flax_conv)):
        with mock.patch.object(unet, "Conv", patch):
            for step_name, steps in (("guided step", guided_steps), ("parameter gradient", parameter_steps)):
                for loop_name, unroll in (("lax.scan", 1), ("unrolled", True)):
                    ms = time_ms(steps(net, params, sde, ts, unroll), x, args.repeats, rows)
                    results[f"{step_name}, {conv_name}, {loop_name}"] = ms
                    print(f"{step_name:18s} {conv_name:13s} {loop_name:9s} {ms:7.2f} ms per signal and step", flush=True)
    if args.out:
        record = {"command": shlex.join(["python"] + sys.argv), "signal_shape": shape, "batch": args.batch,
                  "steps": args.steps, "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
                  "ms_per_signal_step": results}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
