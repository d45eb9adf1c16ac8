"""MCG: Manifold Constrained Gradients (Chung et al., NeurIPS 2022), general linear A (METHODS.md Section 3.2).

Full DDPM grid t_i = i/N; per step, with x0_hat clipped to [0,1]:
    x'      = DDPM step t_i -> t_{i-1} from (x_i, x0_hat)
    g       = grad_{x_i} ||A^+ (y - A x0_hat)||_2                (non-squared, per measurement)
    x''     = x' - alpha_step P_perp g,   P = A^+ A              (gradient only in the null space of A)
    y_lvl   = alpha_l y + sigma_l A xi,  xi ~ N(0, I_d)          (noised measurement at level l)
    x_{i-1} = x'' + A^+ (y_lvl - A x'')                          (projection onto {x : A x = y_lvl})
For inpainting (A^+ = A^T = mask) this is the official inpainting loop. Meant for noiseless y: the hard
projection copies measurement noise into the sample. Needs a linear A with pinv.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from apd.baselines import common

_NORM_EPS = 1e-12  # inside the square root: a zero residual would give a NaN gradient
_NOISE_TIMES = ("input", "output")


def solve(
    prior,
    operator,
    y,
    key,
    *,
    alpha_step: float = 1.0,
    num_steps: int = 1000,
    clip: bool = True,
    y_noise_time: str = "input",
):
    """Samples (N, *S), one per measurement, and nfe.

    alpha_step: MCG gradient weight (official 1.0 for inpainting, 0.1 colorization); not scale-free, size it
      to the dimension of the problem.
    num_steps: DDPM steps N (official 1000).
    clip: clip x0_hat to [0,1] (official clip_denoised=True).
    y_noise_time: 'input' noises y to the level of the step's input time t_i (official code); 'output' to the
      output time t_{i-1} (consistent; observed entries of the result equal y exactly).
    nfe = num_steps: one network evaluation with one VJP per step (counted as one evaluation).
    """
    common.require(operator, "linear", "MCG")
    common.require(operator, "pinv", "MCG")
    if common.has_feature(operator, "denoise"):
        raise ValueError("MCG does not apply to denoising: its correction acts in the null space of A, empty for A = I")
    if y_noise_time not in _NOISE_TIMES:
        raise ValueError(f"y_noise_time must be one of {_NOISE_TIMES}, got {y_noise_time!r}")
    samples = _solve(
        prior, operator, y, key, jnp.float32(alpha_step), num_steps=int(num_steps), clip=bool(clip), y_noise_time=y_noise_time
    )
    return samples, int(num_steps)


@functools.partial(jax.jit, static_argnames=("num_steps", "clip", "y_noise_time"))
def _solve(prior, operator, y, key, alpha_step, num_steps, clip, y_noise_time):
    sde = prior.sde
    grid = jnp.asarray(common.full_grid(num_steps), jnp.float32)

    def one(op, y_i, key_i):
        init_key, steps_key = jax.random.split(key_i)

        def residual_norm(x0_hat):
            x0_hat = jnp.clip(x0_hat, 0.0, 1.0) if clip else x0_hat
            r = op.pinv(y_i - op.apply(x0_hat))
            return jnp.sqrt(jnp.sum(r**2) + _NORM_EPS), x0_hat

        def step(x, inputs):
            t, s, step_key = inputs
            ddpm_key, y_key = jax.random.split(step_key)
            x0_hat, _, pullback = common.tweedie_vjp(prior, x, t)
            (_, x0_used), grad_x0 = jax.value_and_grad(residual_norm, has_aux=True)(x0_hat)
            g = pullback(grad_x0)
            x_next = common.ddpm_step(sde, x, x0_used, t, s, ddpm_key)
            x_next = x_next - alpha_step * (g - op.pinv(op.apply(g)))
            level = t if y_noise_time == "input" else s
            xi = jax.random.normal(y_key, x.shape, x.dtype)
            y_level = sde.alpha(level) * y_i + sde.sigma(level) * op.apply(xi)
            return x_next + op.pinv(y_level - op.apply(x_next)), None

        x = jax.random.normal(init_key, prior.signal_shape)
        keys = jax.random.split(steps_key, num_steps)
        x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:], keys))
        return x

    return common.map_measurements(one, operator, y, key)
