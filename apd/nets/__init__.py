"""Epsilon-prediction score networks: module(x (B,*S), t (B,)) -> eps_hat (B,*S)."""
from __future__ import annotations

import flax.linen as nn

from apd.nets.mlp import ResidualMLP

__all__ = ["ResidualMLP", "make_score_net"]


def make_score_net(cfg, signal_shape: tuple[int, ...]) -> nn.Module:
    """The network named by cfg.name ('mlp', 'unet', 'vertex_unet') with the sizes in cfg."""
    name = cfg.name
    if name == "mlp":
        return ResidualMLP(width=cfg.width, num_blocks=cfg.num_blocks)
    raise ValueError(f"unknown score network {name!r}; known: mlp")
