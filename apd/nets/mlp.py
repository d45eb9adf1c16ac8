"""Residual MLP epsilon-network for small signals (vertex signals, 8x8 digits): fast on CPU."""
from __future__ import annotations

import math

import flax.linen as nn
import jax

from apd.nets.embedding import sinusoidal_embedding


class ResidualMLP(nn.Module):
    """eps_hat(x, t) for x (B, *S) flattened to d features; returns (B, *S).

    width: hidden features; num_blocks: residual blocks (LayerNorm -> Dense -> SiLU -> Dense, plus a time
    shift). A full-rank path adds g(t) * x per entry, g a learned function of t: where the data barely vary
    (a blank background), eps = x / sigma_t, which a width < d bottleneck could not pass through; the hidden
    layers then model only the data's subspace. Output layers are zero-initialised: the untrained net
    predicts eps = 0.
    """

    width: int = 512
    num_blocks: int = 4
    time_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        batch_shape, d = x.shape, math.prod(x.shape[1:])
        flat = x.reshape(x.shape[0], d)
        h = flat
        temb = sinusoidal_embedding(t, self.time_dim)
        temb = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(temb)))
        h = nn.Dense(self.width)(h)
        for _ in range(self.num_blocks):
            r = nn.LayerNorm()(h)
            r = nn.Dense(self.width)(nn.silu(r)) + nn.Dense(self.width)(nn.silu(temb))
            r = nn.Dense(self.width)(nn.silu(r))
            h = h + r
        out = nn.Dense(d, kernel_init=nn.initializers.zeros)(nn.silu(nn.LayerNorm()(h)))
        gain = nn.Dense(d, kernel_init=nn.initializers.zeros)(nn.silu(temb))
        return (out + gain * flat).reshape(batch_shape)
