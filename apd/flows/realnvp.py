"""Conditional RealNVP on flattened signals (the paper's form).

x = G(z, c): a stack of affine couplings on the flattened signal (d entries, any d, odd included). In each
coupling the first half h = d // 2 of the (permuted) vector conditions the other d - h entries through an
MLP that also sees the flattened condition c (the measurement, plus the mask where it varies):

    x_b = z_b * exp(s) + m,   (s, m) = MLP([z_a, c]),   s = scale_bound * tanh(raw / scale_bound)

followed by a fixed random permutation. With linear_shift, the shift also has a zero-initialised linear path
from [z_a, c], so y reaches the shift at full rank through an MLP narrower than the signal. On wide signals
that path dominates the cost (4,140 vertices: 100M of 125M parameters, 7x the step time) and, with Adam,
its many noisy weights blur the output; the estimate skip below already passes y at full rank, so the
bunny and ERA5 configs turn it off.

After the couplings a per-entry affine map (zero-initialised log-scale) sets the overall location and
spread; given a `FlowCondition`, the estimate x0(y) is added there too, times a per-entry gain g (initialised
to 1): x = h * exp(out_log_scale) + out_shift + g * x0. The conditioners' last layers are zero-initialised,
so an untrained flow is that affine map of z. Nothing depends on the batch: one sample never depends on the
others drawn with it.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from apd.flows.condition import split_condition


class CouplingMLP(nn.Module):
    """(conditioning half (B,h), condition (B,k)) -> (log-scale, shift), each (B, out_dim)."""

    out_dim: int
    width: int
    depth: int
    scale_bound: float
    linear_shift: bool

    @nn.compact
    def __call__(self, half: jax.Array, cond: jax.Array):
        h = h_in = jnp.concatenate([half, cond], axis=-1)
        for _ in range(self.depth):
            h = nn.gelu(nn.Dense(self.width)(h))
        out = nn.Dense(2 * self.out_dim, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(h)
        raw_scale, shift = jnp.split(out, 2, axis=-1)
        if self.linear_shift:
            shift = shift + nn.Dense(self.out_dim, use_bias=False, kernel_init=nn.initializers.zeros)(h_in)
        return self.scale_bound * jnp.tanh(raw_scale / self.scale_bound), shift


class ConditionalRealNVP(nn.Module):
    """G(z, c) for z (B, *S) and c (B, *C), returning x (B, *S) and log|det dx/dz| (B,); d = prod(S).

    num_couplings: coupling layers; width, depth: their MLPs; scale_bound: |log-scale| limit per coupling;
    linear_shift: whether the shifts also get the linear path from [z_a, c] (see the module docstring);
    seed: the fixed permutations (constants, not parameters).
    """

    signal_shape: tuple[int, ...]
    num_couplings: int = 8
    width: int = 256
    depth: int = 2
    scale_bound: float = 2.0
    linear_shift: bool = True
    seed: int = 0

    @property
    def dim(self) -> int:
        return math.prod(self.signal_shape)

    def setup(self):
        if self.dim < 2:
            raise ValueError(f"a coupling flow needs at least 2 dimensions, got {self.dim}")
        self.split = self.dim // 2
        rng = np.random.RandomState(self.seed)
        perms = [rng.permutation(self.dim) for _ in range(self.num_couplings)]
        self.perms = [jnp.asarray(p) for p in perms]
        self.inv_perms = [jnp.asarray(np.argsort(p)) for p in perms]
        self.couplings = [
            CouplingMLP(self.dim - self.split, self.width, self.depth, self.scale_bound, self.linear_shift)
            for _ in range(self.num_couplings)
        ]
        self.out_log_scale = self.param("out_log_scale", nn.initializers.zeros, (self.dim,))
        self.out_shift = self.param("out_shift", nn.initializers.zeros, (self.dim,))
        self.estimate_gain = self.param("estimate_gain", nn.initializers.ones, (self.dim,))

    def _check(self, v, cond):
        """(v flat (B,d), features flat (B,k), offset (B,d): gain * estimate, or 0 without one)."""
        features, offset = split_condition(cond, self.estimate_gain, v.shape)
        if tuple(v.shape[1:]) != tuple(self.signal_shape):
            raise ValueError(f"expected a (batch, *{tuple(self.signal_shape)}) array, got shape {v.shape}")
        if features.shape[0] != v.shape[0]:
            raise ValueError(f"condition batch {features.shape[0]} != signal batch {v.shape[0]}")
        return v.reshape(v.shape[0], -1), features.reshape(features.shape[0], -1), offset

    def __call__(self, z: jax.Array, cond):
        """Sampling direction z -> x, with log|det dx/dz|; cond: features (B,*C) or a FlowCondition."""
        h, c, offset = self._check(z, cond)
        logdet = jnp.zeros(z.shape[0], z.dtype)
        for coupling, perm in zip(self.couplings, self.perms):
            a, b = h[:, : self.split], h[:, self.split :]
            log_s, shift = coupling(a, c)
            b = b * jnp.exp(log_s) + shift
            logdet += jnp.sum(log_s, axis=1)
            h = jnp.concatenate([a, b], axis=1)[:, perm]
        x = h * jnp.exp(self.out_log_scale) + self.out_shift + offset
        return x.reshape(z.shape), logdet + jnp.sum(self.out_log_scale)

    def inverse(self, x: jax.Array, cond):
        """Density direction x -> z, with log|det dz/dx| = -log|det dx/dz|."""
        h, c, offset = self._check(x, cond)
        h = (h - self.out_shift - offset) * jnp.exp(-self.out_log_scale)
        logdet = jnp.full(x.shape[0], -jnp.sum(self.out_log_scale), x.dtype)
        for coupling, inv_perm in zip(reversed(self.couplings), reversed(self.inv_perms)):
            h = h[:, inv_perm]
            a, b = h[:, : self.split], h[:, self.split :]
            log_s, shift = coupling(a, c)
            b = (b - shift) * jnp.exp(-log_s)
            logdet -= jnp.sum(log_s, axis=1)
            h = jnp.concatenate([a, b], axis=1)
        return h.reshape(x.shape), logdet
