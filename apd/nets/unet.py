"""DDPM++-style epsilon U-Net for images (B,H,W,C), built on a backbone that works in any number of
spatial dimensions (the 1-D vertex U-Net reuses it).

Block design (Ho et al. 2020; Song et al. 2021, DDPM++): residual blocks GroupNorm -> SiLU -> Conv, a
projection of the time embedding added after the first conv, optional dropout, a 1x1 conv on the skip
path when the channel count changes, and the sum scaled by 1/sqrt(2); single-head self-attention blocks
with the same scaled skip; stride-2 conv downsampling, nearest-neighbour + conv upsampling. The output
conv ('conv_out') is zero-initialised, so the untrained network predicts eps = 0.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd.nets.conv import Conv
from apd.nets.embedding import sinusoidal_embedding

__all__ = ["ResBlock", "AttnBlock", "UNetBackbone", "UNet", "group_count"]


def group_count(channels: int, max_groups: int) -> int:
    """The largest divisor of channels that is <= max_groups and leaves >= 4 channels per group (or 1).

    Groups of one channel would normalise away the per-channel time shift added in ResBlock, so small
    channel counts get fewer groups (as NCSN++ does with min(channels // 4, 32)).
    """
    limit = max(1, min(max_groups, channels // 4))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def _conv(features: int, kernel: int = 3, stride: int = 1, circular_axes: tuple[int, ...] = (), **kwargs):
    """A 'SAME' conv on h (B,*L,C) whose padding wraps around along the spatial axes in circular_axes (0 = first)."""

    def conv(h: jax.Array) -> jax.Array:
        nd = h.ndim - 2
        pads = jax.lax.padtype_to_pads(h.shape[1:-1], (kernel,) * nd, (stride,) * nd, "SAME")
        wrap = [p if a in circular_axes else (0, 0) for a, p in enumerate(pads)]
        zero = [(0, 0) if a in circular_axes else p for a, p in enumerate(pads)]
        h = jnp.pad(h, [(0, 0), *wrap, (0, 0)], mode="wrap")
        return Conv(features, (kernel,) * nd, (stride,) * nd, tuple(zero), **kwargs)(h)

    return conv


class ResBlock(nn.Module):
    """h (B,*L,Cin), temb (B,E) -> (B,*L,features); convolutions wrap around along circular_axes."""

    features: int
    dropout: float = 0.0
    num_groups: int = 32
    circular_axes: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
        nd = h.ndim - 2
        conv = functools.partial(_conv, circular_axes=self.circular_axes)
        r = nn.silu(nn.GroupNorm(group_count(h.shape[-1], self.num_groups))(h))
        r = conv(self.features)(r)
        r = r + nn.Dense(self.features)(nn.silu(temb)).reshape((-1,) + (1,) * nd + (self.features,))
        r = nn.silu(nn.GroupNorm(group_count(self.features, self.num_groups))(r))
        r = nn.Dropout(self.dropout)(r, deterministic=not train)
        r = conv(self.features)(r)
        if h.shape[-1] != self.features:
            h = conv(self.features, kernel=1)(h)
        return (h + r) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions: h (B,*L,C) -> (B,*L,C)."""

    num_groups: int = 32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = h.shape[-1]
        tokens = nn.GroupNorm(group_count(c, self.num_groups))(h).reshape(h.shape[0], -1, c)
        q, k, v = (nn.Dense(c)(tokens) for _ in range(3))
        weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / math.sqrt(c), axis=-1)
        out = nn.Dense(c)(jnp.einsum("bij,bjc->bic", weights, v))
        return (h + out.reshape(h.shape)) / math.sqrt(2.0)


def _upsample(h: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 along every spatial axis of h (B,*L,C)."""
    for axis in range(1, h.ndim - 1):
        h = jnp.repeat(h, 2, axis=axis)
    return h


class UNetBackbone(nn.Module):
    """eps U-Net on x (B,*L,C) whose spatial sizes are divisible by 2**(len(channel_mult)-1).

    Level i works at spatial size L / 2**i with base_channels * channel_mult[i] channels and
    num_res_blocks residual blocks (num_res_blocks + 1 on the way up); attn_levels lists the levels that
    add self-attention after each residual block; mid_attn adds it between the two middle blocks.
    circular_axes lists the spatial axes (0 = first) along which every convolution wraps around (a periodic
    signal); the others are zero-padded.
    """

    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attn_levels: tuple[int, ...] = ()
    mid_attn: bool = True
    dropout: float = 0.0
    num_groups: int = 32
    circular_axes: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        levels = len(self.channel_mult)
        conv = functools.partial(_conv, circular_axes=self.circular_axes)
        block = functools.partial(
            ResBlock, dropout=self.dropout, num_groups=self.num_groups, circular_axes=self.circular_axes
        )
        temb = sinusoidal_embedding(t, self.base_channels)
        temb = nn.Dense(4 * self.base_channels)(temb)
        temb = nn.Dense(4 * self.base_channels)(nn.silu(temb))

        h = conv(self.base_channels)(x)
        skips = [h]
        for i, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = block(self.base_channels * mult)(h, temb, train)
                if i in self.attn_levels:
                    h = AttnBlock(self.num_groups)(h)
                skips.append(h)
            if i < levels - 1:
                h = conv(h.shape[-1], stride=2)(h)
                skips.append(h)

        h = block(h.shape[-1])(h, temb, train)
        if self.mid_attn:
            h = AttnBlock(self.num_groups)(h)
        h = block(h.shape[-1])(h, temb, train)

        for i, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.base_channels * mult)(jnp.concatenate([h, skips.pop()], axis=-1), temb, train)
                if i in self.attn_levels:
                    h = AttnBlock(self.num_groups)(h)
            if i > 0:
                h = conv(h.shape[-1])(_upsample(h))

        h = nn.silu(nn.GroupNorm(group_count(h.shape[-1], self.num_groups))(h))
        return conv(x.shape[-1], kernel_init=nn.initializers.zeros, name="conv_out")(h)


class UNet(nn.Module):
    """eps_hat(x, t) for images x (B,H,W,C), t (B,) in [0,1]; returns (B,H,W,C).

    H and W are reflect-padded at the bottom/right to the next multiple of 2**(len(channel_mult)-1) and
    the output cropped back (28x28 MNIST needs no padding with 3 levels, 4 pixels with 4 levels).
    attn_resolutions are padded heights at which residual blocks add self-attention; the middle block
    always attends (DDPM). dropout acts only with train=True, which then needs a 'dropout' rng.
    """

    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    num_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"UNet expects images (B,H,W,C), got shape {x.shape}")
        height, width = x.shape[1:3]
        factor = 2 ** (len(self.channel_mult) - 1)
        pad_h, pad_w = -height % factor, -width % factor
        if pad_h >= height or pad_w >= width:
            raise ValueError(f"image {height}x{width} is too small for {len(self.channel_mult)} levels")
        h = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        attn_levels = tuple(
            i for i in range(len(self.channel_mult)) if (height + pad_h) // 2**i in self.attn_resolutions
        )
        out = UNetBackbone(
            self.base_channels,
            self.channel_mult,
            self.num_res_blocks,
            attn_levels=attn_levels,
            mid_attn=True,
            dropout=self.dropout,
            num_groups=self.num_groups,
        )(h, t, train)
        return out[:, :height, :width]
