"""1-D DDPM over mesh vertices: the U-Net backbone run along the vertex sequence of x (B,V,C)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd.nets.unet import UNetBackbone


class VertexUNet(nn.Module):
    """eps_hat(x, t) for vertex signals x (B,V,C), t (B,) in [0,1]; returns (B,V,C).

    The vertex index is the length axis of 1-D convolutions (kernel 3). V is zero-padded at the end to
    the next multiple of 2**(len(channel_mult)-1) (1,889 -> 1,892 with 3 levels) and the output cropped
    back. attn_levels lists level indices whose residual blocks add self-attention over the (downsampled)
    sequence; the middle block attends only if the deepest level is listed. dropout acts only with
    train=True, which then needs a 'dropout' rng.
    """

    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = ()
    dropout: float = 0.0
    num_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 3:
            raise ValueError(f"VertexUNet expects vertex signals (B,V,C), got shape {x.shape}")
        num_vertices = x.shape[1]
        pad = -num_vertices % 2 ** (len(self.channel_mult) - 1)
        h = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        return self.backbone()(h, t, train)[:, :num_vertices]

    def backbone(self, circular_axes: tuple[int, ...] = ()) -> UNetBackbone:
        """The UNetBackbone of these fields (for use inside __call__); raises ValueError for bad attn_levels."""
        levels = len(self.channel_mult)
        bad = [i for i in self.attn_levels if not 0 <= i < levels]
        if bad:
            raise ValueError(f"attn_levels {bad} out of range for {levels} levels")
        return UNetBackbone(
            self.base_channels,
            self.channel_mult,
            self.num_res_blocks,
            attn_levels=tuple(self.attn_levels),
            mid_attn=levels - 1 in self.attn_levels,
            dropout=self.dropout,
            num_groups=self.num_groups,
            circular_axes=circular_axes,
        )
