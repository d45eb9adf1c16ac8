"""PiGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz, ICLR 2023), METHODS.md Section 4.

DDIM(eta) on the skip grid (METHODS 1.4; K = 100 gives t = 0.991, 0.981, ..., 0.001, then 0). With
x0_hat, eps_hat the Tweedie estimates at (x_t, t), J = d x0_hat / d x_t, and the VP adaptive weight
r_t^2 = sigma_t^2 (the exact Cov[x0|x_t] of a N(m, I) prior), each step t -> s computes

    u = r_t^2 A^T (r_t^2 A A^T + s_y^2 I)^{-1} (y - A x0_hat)
      = V diag( r_t^2 s_j / (r_t^2 s_j^2 + s_y^2) ) U^T (y - A x0_hat)      (SVD form)
      = A^+ (y - A x0_hat)                                                    (s_y = 0)
    g = J^T u                                                                 (one VJP through the network)

so that g = r_t^2 G_t with G_t the paper's likelihood-score approximation (Eq. 7). Two weightings:

    guidance="official"  (RED-diff algos/pgdm.py with awd=True; the default)
        x_s = DDIM_eta(x0_hat, eps_hat; t -> s) + w alpha_s alpha_t g
    guidance="paper"     (conditional score s + w G_t substituted into DDIM, METHODS 4.2)
        x_s = DDIM_eta(x0_hat + w g / alpha_t, eps_hat - w g / sigma_t; t -> s)

The last step goes to s = 0, where DDIM returns its x0 argument: the output is x0_hat(x_0.001) + w alpha_t g
(official) or the guided x0 (paper). Initialisation x = alpha_T A^+ y + sigma_T z at the first grid time T.

Differences from the official code, on purpose:
- s_y = operator.noise_std enters u through the SVD form (the official code always uses the noiseless
  A^+ (y - A x0_hat)). An operator without an SVD form gets the noiseless u, with a warning when s_y > 0.
- The official inpainting shortcut (pasting y into x0_hat and masking g) is not applied; the generic
  formula above covers inpainting.
- No clipping of x0_hat (as the official code).

Cost: nfe = num_steps. Each evaluation is one forward pass of the network together with its VJP; the VJP is
counted inside that evaluation, not as a second one.
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp

from apd.baselines.common import ddim_step, has_feature, map_measurements, require, skip_grid, tweedie_vjp

GUIDANCE = ("official", "paper")


class Settings(NamedTuple):
    num_steps: int = 100  # K of the skip grid; 100 as in RED-diff's sample_test.sh
    eta: float = 1.0  # DDIM eta; 1.0 as in sample_test.sh (the RED-diff config default is 0.0)
    w: float = 1.0  # guidance weight (grad_term_weight in pgdm.yaml)
    guidance: str = "official"  # "official" (w alpha_s alpha_t J^T u) or "paper" (w G_t in the DDIM score)


def _check(settings: Settings) -> None:
    skip_grid(settings.num_steps)  # raises on a bad step count
    if not 0.0 <= settings.eta <= 1.0:
        raise ValueError(f"PiGDM eta must be in [0, 1], got {settings.eta}")
    if settings.guidance not in GUIDANCE:
        raise ValueError(f"PiGDM guidance must be one of {GUIDANCE}, got {settings.guidance!r}")


def _uses_svd(operator) -> bool:
    """Noise-aware u needs the SVD form; s_y = 0 needs only A^+."""
    return operator.noise_std > 0 and has_feature(operator, "svd")


def guidance_vector(operator, y: jax.Array, x0_hat: jax.Array, r2) -> jax.Array:
    """u = r^2 A^T (r^2 A A^T + s_y^2 I)^{-1} (y - A x0_hat) for ONE operator, shape S (see module docstring)."""
    residual = y - operator.apply(x0_hat)
    if not _uses_svd(operator):
        return operator.pinv(residual)
    s = operator.singular_values()
    scale = r2 * s / (r2 * s**2 + operator.noise_std**2)
    return operator.v(scale * operator.u_t(residual))


def _solve_one(prior, operator, y, key, settings: Settings):
    sde = prior.sde
    grid = skip_grid(settings.num_steps)
    init_key, steps_key = jax.random.split(key)
    t_first = jnp.float32(grid[0])
    z = jax.random.normal(init_key, prior.signal_shape)
    x = sde.alpha(t_first) * operator.pinv(y) + sde.sigma(t_first) * z

    def step(x, inputs):
        t, s, step_key = inputs
        x0_hat, eps_hat, pullback = tweedie_vjp(prior, x, t)
        alpha_t, sigma_t = sde.alpha(t), sde.sigma(t)
        g = pullback(jax.lax.stop_gradient(guidance_vector(operator, y, x0_hat, sigma_t**2)))
        w = settings.w
        if settings.guidance == "official":
            x_s = ddim_step(sde, x0_hat, eps_hat, t, s, settings.eta, step_key) + w * sde.alpha(s) * alpha_t * g
        else:
            x_s = ddim_step(sde, x0_hat + w * g / alpha_t, eps_hat - w * g / sigma_t, t, s, settings.eta, step_key)
        return x_s, None

    times = (jnp.asarray(grid[:-1], jnp.float32), jnp.asarray(grid[1:], jnp.float32))
    x, _ = jax.lax.scan(step, x, times + (jax.random.split(steps_key, settings.num_steps),))
    return x


@functools.partial(jax.jit, static_argnames="settings")
def _solve(prior, operator, y, key, settings: Settings):
    return map_measurements(lambda op, y_, k: _solve_one(prior, op, y_, k, settings), operator, y, key)


def solve(prior, operator, y: jax.Array, key: jax.Array, **settings) -> tuple[jax.Array, int]:
    """PiGDM samples (N, *S), one per measurement y (N, *measurement_shape), and nfe = num_steps.

    operator: N linear operators with a pseudo-inverse (leading axis N); key_i = fold_in(key, i).
    settings: num_steps (100), eta (1.0), w (1.0), guidance ("official" | "paper"); see Settings.
    """
    require(operator, "linear", "PiGDM")
    require(operator, "pinv", "PiGDM")
    settings = Settings(**settings)
    _check(settings)
    if operator.noise_std > 0 and not has_feature(operator, "svd"):
        warnings.warn(
            f"PiGDM: {type(operator).__name__} has no SVD form, so the guidance uses the noiseless "
            f"A^+ (y - A x0_hat) and ignores noise_std = {operator.noise_std}",
            stacklevel=2,
        )
    return _solve(prior, operator, y, key, settings), settings.num_steps
