"""Residual MLP epsilon-network for small signals (vertex signals, 8x8 digits): fast on CPU."""
from __future__ import annotations

import flax.linen as nn
import jax

from apd.nets.embedding import sinusoidal_embedding


class ResidualMLP(nn.Module):
    """eps_hat(x, t) for x (B, *S) flattened to d features; returns (B, *S).

    width: hidden features; num_blocks: residual blocks (LayerNorm -> Dense -> SiLU -> Dense, plus a time
    shift); the output layer is zero-initialised so the untrained net predicts eps = 0.
    """

    width: int = 512
    num_blocks: int = 4
    time_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        batch_shape = x.shape
        h = x.reshape(x.shape[0], -1)
        temb = sinusoidal_embedding(t, self.time_dim)
        temb = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(temb)))
        h = nn.Dense(self.width)(h)
        for _ in range(self.num_blocks):
            r = nn.LayerNorm()(h)
            r = nn.Dense(self.width)(nn.silu(r)) + nn.Dense(self.width)(nn.silu(temb))
            r = nn.Dense(self.width)(nn.silu(r))
            h = h + r
        out = nn.Dense(x[0].size, kernel_init=nn.initializers.zeros)(nn.silu(nn.LayerNorm()(h)))
        return out.reshape(batch_shape)
