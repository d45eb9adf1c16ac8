"""Shared pieces of the baseline samplers (METHODS.md Section 1): time grids, DDPM and DDIM steps, Tweedie
estimates of ONE signal, network VJPs, operator feature checks, and the per-measurement vmap.

Conventions: a signal x has its natural shape S (no batch axis), t and s are scalar times with t > s, and
every quantity follows the VP-SDE of `prior.sde` (alpha_t, sigma_t, abar_t = alpha_t^2).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from apd.operators import Denoise

# ---------------------------------------------------------------------------------------------------------
# Time grids (METHODS 1.4). Each returns a descending float64 array (K+1,) ending at 0; the sampler steps
# over the consecutive pairs (grid[:-1], grid[1:]), calling the network at grid[:-1] only.


def full_grid(num_steps: int) -> np.ndarray:
    """Full DDPM grid t_i = i/N for i = N..0: 1, (N-1)/N, ..., 1/N, 0 (DPS, MCG)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return np.arange(num_steps, -1, -1) / num_steps


def skip_grid(num_steps: int, num_train: int = 1000) -> np.ndarray:
    """"Skip" respacing of a num_train-step schedule (RED-diff get_timesteps, DDRM sample_image).

    skip = num_train // K; model times (j skip + 1) / num_train for j = K-1..0, then 0.
    K = 20: 0.951, 0.901, ..., 0.001, 0.
    """
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps must be in [1, {num_train}], got {num_steps}")
    skip = num_train // num_steps
    model_times = (np.arange(num_steps - 1, -1, -1) * skip + 1) / num_train
    return np.append(model_times, 0.0)


# ---------------------------------------------------------------------------------------------------------
# Steps between two grid times t > s (METHODS 1.4). abar ratios are formed from B(t) for stability near 0.


def _step_scalars(sde, t, s):
    """alpha_t, alpha_s, sigma_t^2, sigma_s^2 and beta_step = 1 - abar_t / abar_s."""
    b_t, b_s = sde.integrated_beta(t), sde.integrated_beta(s)
    return (
        jnp.exp(-0.5 * b_t),
        jnp.exp(-0.5 * b_s),
        -jnp.expm1(-b_t),
        -jnp.expm1(-b_s),
        -jnp.expm1(-(b_t - b_s)),
    )


def ddpm_step(sde, x: jax.Array, x0_hat: jax.Array, t, s, key: jax.Array) -> jax.Array:
    """DDPM ancestral step t -> s from (x_t, x0_hat) with the 'fixed small' variance beta_tilde.

    mean = sqrt(abar_s) beta_step / (1-abar_t) x0_hat + sqrt(1-beta_step) (1-abar_s)/(1-abar_t) x_t,
    x_s = mean + sqrt(beta_tilde) z, beta_tilde = (1-abar_s)/(1-abar_t) beta_step (0 at s = 0, so x_0 = x0_hat).
    """
    alpha_t, alpha_s, var_t, var_s, beta_step = _step_scalars(sde, t, s)
    mean = alpha_s * beta_step / var_t * x0_hat + (alpha_t / alpha_s) * var_s / var_t * x
    beta_tilde = var_s / var_t * beta_step
    return mean + jnp.sqrt(beta_tilde) * jax.random.normal(key, x.shape, x.dtype)


def ddim_step(sde, x0_hat: jax.Array, eps_hat: jax.Array, t, s, eta: float, key: jax.Array) -> jax.Array:
    """DDIM(eta) step t -> s: x_s = sqrt(abar_s) x0_hat + c2 eps_hat + c1 z (RED-diff algos/ddim.py).

    c1 = eta sqrt(beta_step (1-abar_s)/(1-abar_t)),  c2 = sqrt(1 - abar_s - c1^2); eta = 1 gives c1^2 = beta_tilde.
    """
    _, alpha_s, var_t, var_s, beta_step = _step_scalars(sde, t, s)
    c1 = eta * jnp.sqrt(beta_step * var_s / var_t)
    c2 = jnp.sqrt(jnp.maximum(var_s - c1**2, 0.0))
    return alpha_s * x0_hat + c2 * eps_hat + c1 * jax.random.normal(key, x0_hat.shape, x0_hat.dtype)


# ---------------------------------------------------------------------------------------------------------
# Network quantities for ONE signal x (shape S) at a scalar time t; the prior is called with a batch of 1.


def tweedie(prior, x: jax.Array, t) -> tuple[jax.Array, jax.Array]:
    """(x0_hat, eps_hat): x0_hat = (x + sigma_t^2 s(x,t)) / alpha_t, eps_hat = -sigma_t s(x,t). One NFE."""
    t = jnp.asarray(t, jnp.float32)
    score = prior.score(x[None], jnp.reshape(t, (1,)))[0]
    alpha, sigma = prior.sde.alpha(t), prior.sde.sigma(t)
    return (x + sigma**2 * score) / alpha, -sigma * score


def tweedie_vjp(prior, x: jax.Array, t) -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    """(x0_hat, eps_hat, pullback) with pullback(v) = J^T v = grad_x <v, x0_hat(x,t)>. One NFE plus one VJP."""
    x0_hat, pull, eps_hat = jax.vjp(lambda x_: tweedie(prior, x_, t), x, has_aux=True)
    return x0_hat, eps_hat, lambda v: pull(v)[0]


def vjp_x0(prior, x: jax.Array, t, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x0_hat, eps_hat, J^T v), J = d x0_hat / dx; v is held fixed (no gradient flows through it)."""
    x0_hat, eps_hat, pullback = tweedie_vjp(prior, x, t)
    return x0_hat, eps_hat, pullback(jax.lax.stop_gradient(v))


def vjp_eps(prior, x: jax.Array, t, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x0_hat, eps_hat, J_eps^T v), J_eps = d eps_hat / dx (C-PiGDM's VJP); v is held fixed."""
    eps_hat, pull, x0_hat = jax.vjp(lambda x_: tweedie(prior, x_, t)[::-1], x, has_aux=True)
    return x0_hat, eps_hat, pull(jax.lax.stop_gradient(v))[0]


# ---------------------------------------------------------------------------------------------------------
# Operator features (METHODS 1.5, 10).

_FEATURE_TEXT = {  # feature: (what the method needs, what the operator lacks)
    "linear": ("a linear operator", "is not linear"),
    "pinv": ("an operator with a pseudo-inverse (pinv)", "has none"),
    "svd": ("an operator with an SVD form (singular_values, v_t, v, u_t, u)", "has none"),
    "denoise": ("the denoising operator Denoise (A = I)", "is not Denoise"),
}


def has_feature(operator, feature: str) -> bool:
    """Whether operator offers feature: 'linear', 'pinv', 'svd' or 'denoise' (A = I)."""
    if feature == "linear":
        return bool(getattr(operator, "linear", False))
    if feature == "pinv":
        return bool(getattr(operator, "linear", False)) and hasattr(operator, "pinv")
    if feature == "svd":
        return bool(getattr(operator, "linear", False)) and hasattr(operator, "singular_values")
    if feature == "denoise":
        return isinstance(operator, Denoise)
    raise ValueError(f"unknown operator feature {feature!r}; known: {sorted(_FEATURE_TEXT)}")


def require(operator, feature: str, method: str) -> None:
    """Raise ValueError, e.g. 'DDRM needs an operator with an SVD form (...); Saturate has none'."""
    if not has_feature(operator, feature):
        need, lack = _FEATURE_TEXT[feature]
        raise ValueError(f"{method} needs {need}; {type(operator).__name__} {lack}")


# ---------------------------------------------------------------------------------------------------------
# Per-measurement mapping: batch invariance by construction.


def measurement_keys(key: jax.Array, n: int) -> jax.Array:
    """Keys (n, 2) of the measurements: key_i = fold_in(key, i) for one key (2,), or `key` itself when it is
    already (n, 2), one key per measurement (e.g. `sample_keys`, for several samples of each measurement)."""
    key = jnp.asarray(key)
    if key.ndim == 2:
        if key.shape[0] != n:
            raise ValueError(f"got {key.shape[0]} keys for {n} measurements")
        return key
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))


def sample_keys(key: jax.Array, measurement_index: jax.Array, num_samples: int) -> jax.Array:
    """Keys (n * num_samples, 2) for num_samples draws of each measurement: row i * num_samples + j is
    fold_in(fold_in(key, index_i), j), so a draw depends only on its measurement's index and its number,
    never on the batch it is computed in."""
    per_measurement = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(measurement_index))
    per_sample = jax.vmap(lambda k: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, jnp.arange(num_samples)))
    return per_sample(per_measurement).reshape(-1, 2)


def map_measurements(solve_one: Callable, operator, y: jax.Array, key: jax.Array):
    """vmap solve_one(operator_i, y_i, key_i) over the N measurements y (N, ...) and operators (leading axis N).

    One measurement alone and inside a batch give the same result for the same key.
    """
    n = y.shape[0]
    for leaf in jax.tree.leaves(operator):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != n:
            raise ValueError(
                f"operator leaves need a leading axis of size {n} (one operator per measurement in y), got "
                f"shape {jnp.shape(leaf)}; build the batch with broadcast_operator(op, {n})"
            )
    return jax.vmap(solve_one)(operator, y, measurement_keys(key, n))
