"""DPS: Diffusion Posterior Sampling (Chung et al., ICLR 2023), official-code form (METHODS.md Section 2).

Full DDPM grid t_i = i/N; per step, with x0_hat clipped to [0,1]:
    x' = DDPM step t_i -> t_{i-1} from (x_i, x0_hat),   g = grad_{x_i} ||y - A(x0_hat)||_2,   x_{i-1} = x' - zeta g
The norm is NOT squared (paper form: zeta = 2 zeta'), taken per measurement, with a tiny epsilon inside the
square root; the gradient passes through A, the clip and the network. Needs A only (A^T by autodiff).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from apd.baselines import common

_NORM_EPS = 1e-12  # inside the square root: ||r|| = 0 would give a NaN gradient


def solve(prior, operator, y, key, *, zeta: float = 0.5, num_steps: int = 1000, clip: bool = True):
    """Samples (N, *S), one per measurement, and nfe.

    zeta: step on the non-squared residual norm; official configs ([-1,1] images): 0.5 inpainting, 0.3 super-
      resolution and blurs, 1.0 phase retrieval. A pure change to [0,1] coordinates halves it: re-tune per task.
    num_steps: DDPM steps N (official 1000).
    clip: clip x0_hat to [0,1] before the DDPM mean and the residual (official clip_denoised=True).
    nfe = num_steps: one network evaluation per step, each with one VJP (a forward pass with its VJP counts
    as one evaluation).
    """
    samples = _solve(prior, operator, y, key, jnp.float32(zeta), num_steps=int(num_steps), clip=bool(clip))
    return samples, int(num_steps)


@functools.partial(jax.jit, static_argnames=("num_steps", "clip"))
def _solve(prior, operator, y, key, zeta, num_steps, clip):
    sde = prior.sde
    grid = jnp.asarray(common.full_grid(num_steps), jnp.float32)

    def one(op, y_i, key_i):
        init_key, steps_key = jax.random.split(key_i)

        def residual_norm(x0_hat):
            x0_hat = jnp.clip(x0_hat, 0.0, 1.0) if clip else x0_hat
            r = y_i - op.apply(x0_hat)
            return jnp.sqrt(jnp.sum(r**2) + _NORM_EPS), x0_hat

        def step(x, inputs):
            t, s, step_key = inputs
            x0_hat, _, pullback = common.tweedie_vjp(prior, x, t)
            (_, x0_used), grad_x0 = jax.value_and_grad(residual_norm, has_aux=True)(x0_hat)
            x_next = common.ddpm_step(sde, x, x0_used, t, s, step_key) - zeta * pullback(grad_x0)
            return x_next, None

        x = jax.random.normal(init_key, prior.signal_shape)
        keys = jax.random.split(steps_key, num_steps)
        x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:], keys))
        return x

    return common.map_measurements(one, operator, y, key)
