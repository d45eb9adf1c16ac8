"""Conditional normalizing flows x = G(z, c): sampling, and log-densities via the inverse.

A flow module maps z (B,*S) and a condition c (B,*C) to x (B,*S) with log|det dx/dz| (B,) in `__call__`,
and back in `inverse`. The functions below turn one into q(x | c).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd.flows.realnvp import ConditionalRealNVP

__all__ = ["ConditionalRealNVP", "make_flow", "sample", "sample_and_log_prob", "log_prob", "normal_log_prob"]


def make_flow(cfg, signal_shape: tuple[int, ...]) -> nn.Module:
    """The flow named by cfg.name: 'realnvp' (dense couplings on the flattened signal) or 'conv' (images)."""
    if cfg.name == "realnvp":
        return ConditionalRealNVP(
            signal_shape=tuple(signal_shape),
            num_couplings=cfg.num_couplings,
            width=cfg.width,
            depth=cfg.depth,
            scale_bound=cfg.scale_bound,
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
    z = jax.random.normal(key, (cond.shape[0],) + tuple(flow.signal_shape))
    x, logdet = flow.apply({"params": params}, z, cond)
    return x, normal_log_prob(z) - logdet


def sample(flow: nn.Module, params, key: jax.Array, cond: jax.Array) -> jax.Array:
    """One sample per condition row, (B,*S)."""
    return sample_and_log_prob(flow, params, key, cond)[0]


def log_prob(flow: nn.Module, params, x: jax.Array, cond: jax.Array) -> jax.Array:
    """log q(x | c) through the inverse, (B,*S) -> (B,)."""
    z, logdet = flow.apply({"params": params}, x, cond, method="inverse")
    return normal_log_prob(z) + logdet
