"""The Prior interface every sampler in apd sees.

A prior is a pytree (so it passes through `jax.jit` as an argument) with
  sde           the VPSDE it was trained with (static);
  signal_shape  the natural shape S of one signal (static), e.g. (H, W, C) or (V, C);
  score(x, t)   grad_x log p_t(x), x (B, *S), t (B,) -> (B, *S);
  sample(key, n) -> (n, *S).
Exact priors also give log_prob(x) (B, *S) -> (B,), in nats.
"""
from __future__ import annotations

from typing import Protocol

import jax

from apd.sde import VPSDE, _expand


class Prior(Protocol):
    sde: VPSDE
    signal_shape: tuple[int, ...]

    def score(self, x: jax.Array, t: jax.Array) -> jax.Array: ...

    def sample(self, key: jax.Array, n: int) -> jax.Array: ...


def eps_from_score(prior: Prior, x: jax.Array, t: jax.Array) -> jax.Array:
    """Noise prediction eps_hat = -sigma_t * score, (B,*S)."""
    return -_expand(prior.sde.sigma(t), x) * prior.score(x, t)


def tweedie_mean(prior: Prior, x: jax.Array, t: jax.Array) -> jax.Array:
    """E[x_0 | x_t] = (x_t + sigma_t^2 score) / alpha_t, (B,*S)."""
    sigma = _expand(prior.sde.sigma(t), x)
    alpha = _expand(prior.sde.alpha(t), x)
    return (x + sigma**2 * prior.score(x, t)) / alpha
