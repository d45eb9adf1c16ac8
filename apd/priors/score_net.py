"""A prior given by a trained epsilon-prediction network: score(x, t) = -eps_theta(x, t) / sigma_t."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from flax import struct

from apd.sde import VPSDE, _expand


@struct.dataclass
class ScoreNetPrior:
    """params are a leaf (traced under jit, never baked in as constants); module, sde, shape are static."""

    params: Any
    module: nn.Module = struct.field(pytree_node=False)
    sde: VPSDE = struct.field(pytree_node=False)
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False)

    def eps(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Noise prediction, x (B,*S), t (B,) -> (B,*S)."""
        return self.module.apply({"params": self.params}, x, t)

    def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
        return -self.eps(x, t) / _expand(self.sde.sigma(t), x)

    def sample(self, key: jax.Array, n: int, num_steps: int = 500, method: str = "euler_maruyama") -> jax.Array:
        return self.sde.sample(self.score, key, (n,) + self.signal_shape, num_steps=num_steps, method=method)
