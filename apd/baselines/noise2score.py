"""Noise2Score (Kim & Ye, NeurIPS 2021) with the clean-data VP prior's score (METHODS.md Section 8).

Denoising only (A = I, y = x + n, n ~ N(0, s_y^2 I)). With t* the time where sigma_t/alpha_t = s_y,
B(t*) = log(1 + s_y^2), and a* = (1 + s_y^2)^(-1/2), a* y is distributed as x_{t*}, and Tweedie gives the
posterior mean
    x_hat = y + a* s_y^2 score(a* y, t*)       (= y - s_y eps_hat(a* y, t*))
It is the MMSE estimate, not a sample: the key does not change the result.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from apd.baselines import common
from apd.priors.base import denoised_mean, denoising_time


def solve(prior, operator, y, key, *, clip: bool = True):
    """Estimates (N, *S), one per measurement, and nfe = 1 (no backprop).

    clip: clamp the output to [0,1] (official code does).
    If t* falls below the prior's t_min (s_y below about 0.01 for t_min = 1e-3), the score is evaluated at
    t_min instead, with a* unchanged, and a warning reports it.
    """
    common.require(operator, "denoise", "Noise2Score")
    s_y = float(operator.noise_std)
    if s_y <= 0:
        raise ValueError(f"Noise2Score needs noisy measurements; noise_std is {s_y}")
    t_star, _ = denoising_time(prior.sde, s_y)
    t = max(t_star, prior.sde.t_min)
    if t > t_star:
        warnings.warn(f"Noise2Score: t* = {t_star:.3g} for s_y = {s_y} is below t_min; the score is taken at t_min = {t}")
    return _solve(prior, operator, y, key, t=t, s_y=s_y, clip=bool(clip)), 1


@functools.partial(jax.jit, static_argnames=("t", "s_y", "clip"))
def _solve(prior, operator, y, key, t, s_y, clip):
    def one(op, y_i, key_i):
        x_hat = denoised_mean(prior, y_i[None], s_y, t)[0]
        return jnp.clip(x_hat, 0.0, 1.0) if clip else x_hat

    return common.map_measurements(one, operator, y, key)
