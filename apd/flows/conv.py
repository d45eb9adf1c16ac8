"""Conditional multi-level convolutional flow on images (Glow / RealNVP style, no factor-out).

x = G(z, c) for z, x (B,H,W,C) and a condition c (B,h,w,k) whose spatial size is the image's or smaller by an
integer factor (super-resolution). Sampling direction, level l = 0 .. L-1:

    squeeze (H_l, W_l, C_l) -> (H_l/2, W_l/2, 4 C_l), then `couplings_per_level` affine channel couplings

and after the last level L unsqueezes restore (H,W,C), followed by a per-entry affine map (zero-initialised
log-scale) to which a `FlowCondition`'s estimate x0(y) (B,H,W,C) is added times a per-entry gain (initialised to
1); c is then its features. A coupling splits the channels by a fixed seeded permutation into a conditioning part a and a
transformed part b (the next coupling swaps the roles, so each pair touches every channel):

    b' = b * exp(s) + m,   (s, m) = ConvNet([a, e_l]),   s = scale_bound * tanh(raw / scale_bound)

and writes b' back in place, so the channel order never changes. e_l are the condition's features at the
level's resolution (one encoder per level, shared by its couplings; average pooling down, repetition up).
The conditioners' last convs are zero-initialised, so an untrained flow is that output map of z. There is no
normalisation of any kind: one sample never depends on the others in its batch.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from apd.flows.condition import split_condition


def squeeze(v: jax.Array) -> jax.Array:
    """Space to depth, (B,H,W,C) -> (B,H/2,W/2,4C); the channel index is (row parity, column parity, c)."""
    b, h, w, c = v.shape
    v = v.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return v.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(v: jax.Array) -> jax.Array:
    """Depth to space, the inverse of `squeeze`: (B,H,W,4C) -> (B,2H,2W,C)."""
    b, h, w, c4 = v.shape
    c = c4 // 4
    v = v.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return v.reshape(b, 2 * h, 2 * w, c)


def resize_condition(cond: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B,h,w,k) -> (B,*size,k): average pooling by an integer factor down, nearest (repeat) up."""
    (h, w), (th, tw) = cond.shape[1:3], size
    if (h, w) == (th, tw):
        return cond
    if h % th == 0 and w % tw == 0 and h // th == w // tw:
        f = h // th
        b, k = cond.shape[0], cond.shape[3]
        return cond.reshape(b, th, f, tw, f, k).mean(axis=(2, 4))
    if th % h == 0 and tw % w == 0 and th // h == tw // w:
        f = th // h
        return jnp.repeat(jnp.repeat(cond, f, axis=1), f, axis=2)
    raise ValueError(
        f"cannot resize a condition of spatial size {(h, w)} to {(th, tw)}: the ratio must be one integer "
        "factor for both axes"
    )


class ConditionEncoder(nn.Module):
    """Condition (B,h,w,k) -> features (B,*size,channels): a 3x3 conv at the input size, resize, a 3x3 conv."""

    channels: int

    @nn.compact
    def __call__(self, cond: jax.Array, size: tuple[int, int]) -> jax.Array:
        h = nn.gelu(nn.Conv(self.channels, (3, 3))(cond))
        h = resize_condition(h, size)
        return nn.gelu(nn.Conv(self.channels, (3, 3))(h))


class ConvCoupling(nn.Module):
    """(conditioning part (B,h,w,ca), features (B,h,w,f)) -> (log-scale, shift), each (B,h,w,out_channels).

    A 3x3 conv in, two residual blocks of two 3x3 convs, and a zero-initialised 3x3 conv out.
    """

    out_channels: int
    channels: int
    scale_bound: float

    @nn.compact
    def __call__(self, part: jax.Array, feats: jax.Array):
        h = nn.Conv(self.channels, (3, 3))(jnp.concatenate([part, feats], axis=-1))
        for _ in range(2):
            r = nn.Conv(self.channels, (3, 3))(nn.gelu(h))
            h = h + nn.Conv(self.channels, (3, 3))(nn.gelu(r))
        out = nn.Conv(
            2 * self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros
        )(nn.gelu(h))
        raw_scale, shift = jnp.split(out, 2, axis=-1)
        return self.scale_bound * jnp.tanh(raw_scale / self.scale_bound), shift


class ConditionalConvFlow(nn.Module):
    """G(z, c) for z (B,H,W,C) and c (B,h,w,k), returning x (B,H,W,C) and log|det dx/dz| (B,).

    num_levels: squeezes (H and W must be divisible by 2**num_levels); couplings_per_level: couplings after
    each squeeze; channels: conv features of the conditioners and condition encoders; scale_bound:
    |log-scale| limit per coupling entry; seed: the fixed channel splits (constants, not parameters).
    """

    signal_shape: tuple[int, int, int]
    num_levels: int = 3
    couplings_per_level: int = 4
    channels: int = 64
    scale_bound: float = 2.0
    seed: int = 0

    def setup(self):
        if len(self.signal_shape) != 3:
            raise ValueError(f"the conv flow needs an (H, W, C) signal shape, got {self.signal_shape}")
        height, width, chans = self.signal_shape
        if height % 2**self.num_levels or width % 2**self.num_levels:
            raise ValueError(
                f"image size {(height, width)} is not divisible by 2**num_levels = {2**self.num_levels}"
            )
        rng = np.random.RandomState(self.seed)
        sizes, splits, couplings = [], [], []
        for level in range(self.num_levels):
            sizes.append((height // 2 ** (level + 1), width // 2 ** (level + 1)))
            c = chans * 4 ** (level + 1)
            for k in range(self.couplings_per_level):
                perm = rng.permutation(c) if k % 2 == 0 else np.roll(perm, c // 2)
                splits.append((perm[: c // 2], perm[c // 2 :], np.argsort(perm)))
                couplings.append(ConvCoupling(c - c // 2, self.channels, self.scale_bound))
        self.sizes, self.splits, self.couplings = sizes, splits, couplings
        self.encoders = [ConditionEncoder(self.channels) for _ in range(self.num_levels)]
        self.out_log_scale = self.param("out_log_scale", nn.initializers.zeros, tuple(self.signal_shape))
        self.out_shift = self.param("out_shift", nn.initializers.zeros, tuple(self.signal_shape))
        self.estimate_gain = self.param("estimate_gain", nn.initializers.ones, tuple(self.signal_shape))

    def _check(self, v: jax.Array, cond):
        """(features (B,h,w,k), offset: gain * estimate (B,H,W,C), or 0 without one)."""
        cond, offset = split_condition(cond, self.estimate_gain, v.shape)
        if tuple(v.shape[1:]) != tuple(self.signal_shape):
            raise ValueError(f"expected a (batch, *{tuple(self.signal_shape)}) array, got shape {v.shape}")
        if cond.ndim != 4:
            raise ValueError(f"expected a (batch, h, w, k) condition, got shape {cond.shape}")
        if cond.shape[0] != v.shape[0]:
            raise ValueError(f"condition batch {cond.shape[0]} != signal batch {v.shape[0]}")
        (height, width), (h, w) = self.signal_shape[:2], cond.shape[1:3]
        if height % h or width % w or height // h != width // w:
            raise ValueError(
                f"condition spatial size {(h, w)} must be the image size {(height, width)} divided by one "
                "integer factor"
            )
        return cond, offset

    def _level_couplings(self, level: int):
        """This level's (coupling, (a indices, b indices, inverse permutation)) pairs, in sampling order."""
        level_slice = slice(level * self.couplings_per_level, (level + 1) * self.couplings_per_level)
        return list(zip(self.couplings[level_slice], self.splits[level_slice]))

    def __call__(self, z: jax.Array, cond):
        """Sampling direction z -> x, with log|det dx/dz|; cond: features (B,h,w,k) or a FlowCondition."""
        cond, offset = self._check(z, cond)
        h, logdet = z, jnp.zeros(z.shape[0], z.dtype)
        for level in range(self.num_levels):
            h = squeeze(h)
            feats = self.encoders[level](cond, self.sizes[level])
            for coupling, (ia, ib, inv) in self._level_couplings(level):
                a, b = h[..., ia], h[..., ib]
                log_s, shift = coupling(a, feats)
                b = b * jnp.exp(log_s) + shift
                logdet += jnp.sum(log_s, axis=(1, 2, 3))
                h = jnp.concatenate([a, b], axis=-1)[..., inv]
        for _ in range(self.num_levels):
            h = unsqueeze(h)
        x = h * jnp.exp(self.out_log_scale) + self.out_shift + offset
        return x, logdet + jnp.sum(self.out_log_scale)

    def inverse(self, x: jax.Array, cond):
        """Density direction x -> z, with log|det dz/dx| = -log|det dx/dz|."""
        cond, offset = self._check(x, cond)
        h = (x - self.out_shift - offset) * jnp.exp(-self.out_log_scale)
        logdet = jnp.full(x.shape[0], -jnp.sum(self.out_log_scale), x.dtype)
        for _ in range(self.num_levels):
            h = squeeze(h)
        for level in reversed(range(self.num_levels)):
            feats = self.encoders[level](cond, self.sizes[level])
            for coupling, (ia, ib, inv) in reversed(self._level_couplings(level)):
                a, b = h[..., ia], h[..., ib]
                log_s, shift = coupling(a, feats)
                b = (b - shift) * jnp.exp(-log_s)
                logdet -= jnp.sum(log_s, axis=(1, 2, 3))
                h = jnp.concatenate([a, b], axis=-1)[..., inv]
            h = unsqueeze(h)
        return h, logdet
