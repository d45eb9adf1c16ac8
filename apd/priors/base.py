"""The Prior interface every sampler in apd sees.

A prior is a pytree (so it passes through `jax.jit` as an argument) with
  sde           the VPSDE it was trained with (static);
  signal_shape  the natural shape S of one signal (static), e.g. (H, W, C) or (V, C);
  score(x, t)   grad_x log p_t(x), x (B, *S), t (B,) -> (B, *S);
  sample(key, n) -> (n, *S).
Exact priors also give log_prob(x) (B, *S) -> (B,), in nats.
"""
from __future__ import annotations

import math
from typing import Protocol

import jax
import jax.numpy as jnp

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


def denoising_time(sde: VPSDE, noise_std: float) -> tuple[float, float]:
    """(t*, a*) for y = x + N(0, s^2 I), s = noise_std: a* y is distributed as x_{t*}, with B(t*) = log(1 + s^2)
    and a* = (1 + s^2)^(-1/2). t* is below sde.t_min when s is below about sqrt(B(t_min))."""
    with jax.ensure_compile_time_eval():  # a Python float even where the caller is traced
        t_star = float(sde.time_of_integrated_beta(math.log1p(noise_std**2)))
    return t_star, (1.0 + noise_std**2) ** -0.5


def denoised_mean(prior: Prior, y: jax.Array, noise_std: float, t: float | None = None) -> jax.Array:
    """The prior's posterior mean E[x | y] for y = x + N(0, s^2 I), y (B,*S), by Tweedie's formula at t*:
    y + a* s^2 score(a* y, t*) (= tweedie_mean(prior, a* y, t*)); one score evaluation.

    t: the time to read the score at, default t* clamped to [t_min, 1] (the formula keeps a*)."""
    t_star, scale = denoising_time(prior.sde, noise_std)
    t = min(max(t_star, prior.sde.t_min), 1.0) if t is None else t
    times = jnp.full((y.shape[0],), t, jnp.float32)
    return y + scale * noise_std**2 * prior.score(scale * y, times)
