"""Conditional normalizing flows x = G(z, c): sampling, and log-densities via the inverse.

A flow module maps z (B,*S) and a condition c to x (B,*S) with log|det dx/dz| (B,) in `__call__`, and back
in `inverse`. The functions below turn one into q(x | c).

The condition is either an array (B,*C) of features or a `FlowCondition`: the features plus a signal-space
estimate x0(y) (B,*S) (the operator's `estimate`, its pseudo-inverse where linear), which the flow adds at its
output through a per-entry gain initialised to 1. An untrained flow then already puts x near x0(y), and
`fit_output` fits that gain and the final affine map to training pairs, so training starts from the best
per-entry affine-Gaussian q(x|y) instead of from x = z.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd.flows.condition import FlowCondition
from apd.flows.realnvp import ConditionalRealNVP

__all__ = [
    "ConditionalRealNVP",
    "FlowCondition",
    "condition_of",
    "fit_output",
    "make_flow",
    "sample",
    "sample_and_log_prob",
    "log_prob",
    "normal_log_prob",
]


def condition_of(operator, y: jax.Array) -> FlowCondition:
    """The flow's condition for ONE measurement y: the operator's condition(y) and its estimate(y)."""
    return FlowCondition(operator.condition(y), operator.estimate(y))


def fit_output(params: Any, x: jax.Array, estimate: jax.Array, min_std: float = 1e-2) -> Any:
    """params with the flow's output map fitted, entry by entry, to training pairs: x (N,*S) and x0(y) (N,*S).

    Per entry, the least-squares line x ~ g x0 + b (g clipped to [0, 1]; g = 1 where x0 does not vary, e.g.
    hidden entries) gives estimate_gain = g and out_shift = b, and out_log_scale = log max(std of the
    residual, min_std). With untrained couplings the flow is then q(x|y) = N(g x0(y) + b, diag(std^2)), the
    best per-entry affine-Gaussian fit: a Wiener filter where the estimate is noisy, the mean where it is empty.
    """
    shape, dtype = params["out_shift"].shape, params["out_shift"].dtype
    x = x.reshape((x.shape[0],) + shape)
    e = estimate.reshape((estimate.shape[0],) + shape)
    x_c, e_c = x - jnp.mean(x, axis=0), e - jnp.mean(e, axis=0)
    var_e = jnp.mean(e_c**2, axis=0)
    varies = var_e > 1e-10
    gain = jnp.where(varies, jnp.clip(jnp.mean(x_c * e_c, axis=0) / jnp.where(varies, var_e, 1.0), 0.0, 1.0), 1.0)
    residual = x - gain * e
    shift = jnp.mean(residual, axis=0)
    log_scale = jnp.log(jnp.maximum(jnp.std(residual, axis=0), min_std))
    fitted = {"estimate_gain": gain, "out_shift": shift, "out_log_scale": log_scale}
    return {**params, **{k: v.astype(dtype) for k, v in fitted.items()}}


def make_flow(cfg, signal_shape: tuple[int, ...]) -> nn.Module:
    """The flow named by cfg.name: 'realnvp' (dense couplings on the flattened signal) or 'conv' (images)."""
    if cfg.name == "realnvp":
        return ConditionalRealNVP(
            signal_shape=tuple(signal_shape),
            num_couplings=cfg.num_couplings,
            width=cfg.width,
            depth=cfg.depth,
            scale_bound=cfg.scale_bound,
            linear_shift=cfg.get("linear_shift", True),  # configs saved before the option had the path
        )
    if cfg.name == "conv":
        from apd.flows.conv import ConditionalConvFlow

        return ConditionalConvFlow(
            signal_shape=tuple(signal_shape),
            num_levels=cfg.num_levels,
            couplings_per_level=cfg.couplings_per_level,
            channels=cfg.channels,
            scale_bound=cfg.scale_bound,
        )
    raise ValueError(f"unknown flow {cfg.name!r}; known: realnvp, conv")


def normal_log_prob(z: jax.Array) -> jax.Array:
    """log N(z; 0, I) per signal, (B,*S) -> (B,)."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def sample_and_log_prob(flow: nn.Module, params, key: jax.Array, cond: jax.Array):
    """One sample per condition row: x (B,*S) and log q(x | c) (B,) in nats."""
    batch = jax.tree.leaves(cond)[0].shape[0]
    z = jax.random.normal(key, (batch,) + tuple(flow.signal_shape))
    x, logdet = flow.apply({"params": params}, z, cond)
    return x, normal_log_prob(z) - logdet


def sample(flow: nn.Module, params, key: jax.Array, cond: jax.Array) -> jax.Array:
    """One sample per condition row, (B,*S)."""
    return sample_and_log_prob(flow, params, key, cond)[0]


def log_prob(flow: nn.Module, params, x: jax.Array, cond: jax.Array) -> jax.Array:
    """log q(x | c) through the inverse, (B,*S) -> (B,)."""
    z, logdet = flow.apply({"params": params}, x, cond, method="inverse")
    return normal_log_prob(z) + logdet
