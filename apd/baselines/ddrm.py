"""DDRM: Denoising Diffusion Restoration Models (Kawar et al., NeurIPS 2022) (METHODS.md Section 6).

Works in VE-scaled spectral coordinates x_bar = V^T x / alpha_t, sigma~_t = sigma_t / alpha_t, with
ybar_j = (U^T y)_j / s_j where s_j > 0, on the skip grid (K = 20: t = 0.951, ..., 0.001, then 0). Per step t -> s,
with x0b = V^T x0_hat(x_t, t), epsb = V^T eps_hat(x_t, t), z fresh, s_y the operator's noise std:
    missing (s_j = 0, or s_j sigma~_s == s_y):  x0b + sqrt(1-eta^2) sigma~_s epsb + eta sigma~_s z
    less noisy than y (0 < s_j sigma~_s < s_y): x0b + sqrt(1-eta^2) sigma~_s (ybar - x0b) s_j / s_y + eta sigma~_s z
    noisier than y (s_j sigma~_s > s_y):        (1-eta_b) x0b + eta_b ybar + sqrt(sigma~_s^2 - eta_b^2 s_y^2/s_j^2) z
    x_s = alpha_s V x_bar
At s = 0 every entry is 'missing' with no noise, so the output is x0_hat at the smallest grid time. No
clipping. The operator's SVD form is used as given (truncating small singular values is the operator's job).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from apd.baselines import common


def solve(prior, operator, y, key, *, eta: float = 0.85, eta_b: float = 1.0, num_steps: int = 20):
    """Samples (N, *S), one per measurement, and nfe = num_steps (no backprop through the network).

    eta: noise weight of the missing / less-noisy components (official 0.85); DDRM's eta, not DDIM's.
    eta_b: weight of ybar in the noisier-than-y components (official 1.0).
    num_steps: K steps on the skip grid (official 20).
    """
    common.require(operator, "svd", "DDRM")
    samples = _solve(prior, operator, y, key, jnp.float32(eta), jnp.float32(eta_b), num_steps=int(num_steps))
    return samples, int(num_steps)


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _solve(prior, operator, y, key, eta, eta_b, num_steps):
    sde = prior.sde
    grid = jnp.asarray(common.skip_grid(num_steps), jnp.float32)

    def one(op, y_i, key_i):
        s_y = float(op.noise_std)
        s_j = op.singular_values()
        present = s_j > 0
        s_safe = jnp.where(present, s_j, 1.0)
        ybar = jnp.where(present, op.u_t(y_i) / s_safe, 0.0)
        y_var = jnp.where(present, (s_y / s_safe) ** 2, 0.0)  # s_y^2 / s_j^2 of the present entries

        def ve_sigma(t):
            return sde.sigma(t) / sde.alpha(t)

        init_key, steps_key = jax.random.split(key_i)
        sig_T = ve_sigma(grid[0])
        z = jax.random.normal(init_key, s_j.shape)
        noisier = present & (s_j * sig_T > s_y)
        x_bar = jnp.where(noisier, ybar + jnp.sqrt(jnp.maximum(sig_T**2 - y_var, 0.0)) * z, sig_T * z)
        x = sde.alpha(grid[0]) * op.v(x_bar)

        def step(x, inputs):
            t, s, step_key = inputs
            x0_hat, eps_hat = common.tweedie(prior, x, t)
            x0b, epsb = op.v_t(x0_hat), op.v_t(eps_hat)
            sig_s = ve_sigma(s)
            z = jax.random.normal(step_key, s_j.shape)
            noisier = present & (s_j * sig_s > s_y)
            less_noisy = present & (s_j * sig_s < s_y)
            missing = x0b + jnp.sqrt(1 - eta**2) * sig_s * epsb + eta * sig_s * z
            gain = s_safe / s_y if s_y > 0 else 0.0  # 1 / (s_y / s_j); unused when s_y = 0 (branch is empty)
            quieter = x0b + jnp.sqrt(1 - eta**2) * sig_s * (ybar - x0b) * gain + eta * sig_s * z
            louder = (1 - eta_b) * x0b + eta_b * ybar + jnp.sqrt(jnp.maximum(sig_s**2 - eta_b**2 * y_var, 0.0)) * z
            x_bar = jnp.where(noisier, louder, jnp.where(less_noisy, quieter, missing))
            return sde.alpha(s) * op.v(x_bar), None

        keys = jax.random.split(steps_key, num_steps)
        x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:], keys))
        return x

    return common.map_measurements(one, operator, y, key)
