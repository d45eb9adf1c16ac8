"""Conditional normalizing flows x = G(z, c): sampling, and log-densities via the inverse.

A flow module maps z (B,*S) and a condition c to x (B,*S) with log|det dx/dz| (B,) in `__call__`, and back
in `inverse`. The functions below turn one into q(x | c).

The condition is either an array (B,*C) of features or a `FlowCondition`: the features plus a signal-space
estimate x0(y) (B,*S) (the operator's pseudo-inverse), which the flow adds at its output through a per-entry
gain initialised to 1. An untrained flow then already puts x near x0(y), and `fit_output` sets its final
affine map to the mean and spread of the residuals x - x0(y) on training pairs, so training starts from the
best per-entry Gaussian around the estimate instead of from x = z.
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


def fit_output(params: Any, residuals: jax.Array, min_std: float = 1e-2) -> Any:
    """params with the flow's final per-entry affine map set to the moments of residuals r = x - x0(y), (N,*S):
    out_shift = mean(r), out_log_scale = log max(std(r), min_std), entry by entry."""
    shape, dtype = params["out_shift"].shape, params["out_shift"].dtype
    r = residuals.reshape((residuals.shape[0],) + shape)
    shift = jnp.mean(r, axis=0).astype(dtype)
    log_scale = jnp.log(jnp.maximum(jnp.std(r, axis=0), min_std)).astype(dtype)
    return {**params, "out_shift": shift, "out_log_scale": log_scale}


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
