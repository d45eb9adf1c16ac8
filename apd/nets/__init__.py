"""Epsilon-prediction score networks: module(x (B,*S), t (B,)) -> eps_hat (B,*S)."""
from __future__ import annotations

import flax.linen as nn

from apd.nets.grid_unet import GridUNet
from apd.nets.mlp import ResidualMLP
from apd.nets.unet import UNet
from apd.nets.vertex_unet import VertexUNet

__all__ = ["GridUNet", "ResidualMLP", "UNet", "VertexUNet", "make_score_net"]

_NETS = {"mlp": ResidualMLP, "unet": UNet, "vertex_unet": VertexUNet, "grid_unet": GridUNet}
_SIGNAL_RANK = {"unet": 3, "vertex_unet": 2, "grid_unet": 2}
_TUPLE_FIELDS = ("channel_mult", "attn_resolutions", "attn_levels", "grid_shape")


def make_score_net(cfg, signal_shape: tuple[int, ...]) -> nn.Module:
    """The network named by cfg.name ('mlp', 'unet', 'vertex_unet', 'grid_unet') with the sizes in cfg.

    'mlp' needs cfg.width and cfg.num_blocks. For 'unet' (signal (H,W,C)), 'vertex_unet' and 'grid_unet'
    (signal (V,C); 'grid_unet' with V = H*W of its grid_shape, default ERA5's (46, 90)) every field of the
    module is optional in cfg (base_channels, channel_mult, num_res_blocks, attn_resolutions / attn_levels,
    dropout, num_groups, grid_shape); missing ones take the module's defaults.
    """
    name = cfg.name
    if name not in _NETS:
        raise ValueError(f"unknown score network {name!r}; known: {', '.join(_NETS)}")
    if name == "mlp":
        return ResidualMLP(width=cfg.width, num_blocks=cfg.num_blocks)
    if len(signal_shape) != _SIGNAL_RANK[name]:
        raise ValueError(f"{name} needs a signal of rank {_SIGNAL_RANK[name]}, got shape {tuple(signal_shape)}")
    module = _NETS[name]
    fields = [f for f in module.__dataclass_fields__ if f not in ("parent", "name")]
    kwargs = {f: cfg.get(f) for f in fields if cfg.get(f) is not None}
    kwargs.update({f: tuple(kwargs[f]) for f in _TUPLE_FIELDS if f in kwargs})
    return module(**kwargs)
