"""2-D DDPM on a latitude-longitude grid: the U-Net backbone run on vertex signals x (B,H*W,C) laid out as
images (B,H,W,C), with convolutions that wrap around in longitude."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd.nets.vertex_unet import VertexUNet


def _halves(pad: int) -> tuple[int, int]:
    return pad // 2, pad - pad // 2


class GridUNet(VertexUNet):
    """eps_hat(x, t) for vertex signals x (B,H*W,C) of the grid_shape (H,W) grid, t (B,) in [0,1]; returns (B,H*W,C).

    Vertex index = row * W + column (rows north to south, columns a full circle of longitude), as in
    apd.data.era5, whose 46x90 grid is the default. The grid is padded to multiples of 2**(len(channel_mult)-1),
    half on each side: latitude by reflection at the poles, longitude with columns from the other side
    (46x90 -> 48x92 with 3 levels); the output is cropped back. Every convolution wraps around in longitude
    with the padded width as period, so the dateline is no edge; the copied columns are a small seam on that
    ring (rolling the input rolls the output only approximately). Latitude ends are zero-padded. The other
    fields are VertexUNet's.
    """

    grid_shape: tuple[int, int] = (46, 90)

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        height, width = self.grid_shape
        if x.ndim != 3 or x.shape[1] != height * width:
            grid = f"(B,{height * width},C) of the {height}x{width} grid"
            raise ValueError(f"GridUNet expects vertex signals {grid}, got shape {x.shape}")
        factor = 2 ** (len(self.channel_mult) - 1)
        (top, bottom), (left, right) = _halves(-height % factor), _halves(-width % factor)
        h = x.reshape(x.shape[0], height, width, x.shape[-1])
        h = jnp.pad(h, ((0, 0), (top, bottom), (0, 0), (0, 0)), mode="reflect")
        h = jnp.pad(h, ((0, 0), (0, 0), (left, right), (0, 0)), mode="wrap")
        out = self.backbone(circular_axes=(1,))(h, t, train)
        return out[:, top : top + height, left : left + width].reshape(x.shape)
