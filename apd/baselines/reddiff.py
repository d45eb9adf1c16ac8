"""RED-diff (Mardani et al., arXiv 2305.04391), official-code form (METHODS.md Section 7).

A point estimate mu, initialised at A^+ y, follows Adam(lr, betas (0.9, 0.99), eps 1e-8) on a descending sweep
of the skip grid (1000 steps: t = 1.000, 0.999, ..., 0.001). Per step, with eps ~ N(0, I) fresh:
    x_t  = alpha_t mu + sigma_t eps,   eps_hat = eps_theta(x_t, t)   (no backprop through the network)
    loss = obs_weight sum((y - A mu)^2) / (2 m) + lam omega(t) sum(sg(eps_hat - eps) mu) / d,   omega = sigma_t/alpha_t
with m measured entries and d signal entries (the code's element means). s_y is not used. The spread over
keys is optimiser noise, not posterior uncertainty. Needs A (A^T by autodiff) and A^+.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from apd.baselines import common


def solve(
    prior,
    operator,
    y,
    key,
    *,
    lam: float = 0.25,
    lr: float = 0.1,
    obs_weight: float = 1.0,
    num_steps: int = 1000,
):
    """Estimates (N, *S), one per measurement, and nfe = num_steps - 1.

    lam: weight of the denoising (regulariser) term, official grad_term_weight 0.25.
    lr: Adam learning rate, official 0.1 (README 0.5).
    obs_weight: weight of the data term, official 1.
    num_steps: steps of the descending skip grid (official 1000).
    As in the official code the output is mu before the last Adam update (its x0_pred), so the network call
    of the last step never affects it and is skipped: num_steps - 1 network evaluations.
    """
    common.require(operator, "pinv", "RED-diff")
    weights = tuple(jnp.float32(w) for w in (lam, lr, obs_weight))
    estimates = _solve(prior, operator, y, key, *weights, num_steps=int(num_steps))
    return estimates, int(num_steps) - 1


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _solve(prior, operator, y, key, lam, lr, obs_weight, num_steps):
    sde = prior.sde
    times = jnp.asarray(common.skip_grid(num_steps)[: num_steps - 1], jnp.float32)  # the updates mu sees
    adam = optax.adam(lr, b1=0.9, b2=0.99, eps=1e-8)

    def one(op, y_i, key_i):
        mu = op.pinv(y_i)
        d, m = mu.size, op.num_measured

        def loss(mu, eps_residual, omega):
            data = obs_weight * jnp.sum((y_i - op.apply(mu)) ** 2) / (2 * m)
            return data + lam * omega * jnp.sum(eps_residual * mu) / d

        def step(carry, inputs):
            mu, opt_state = carry
            t, step_key = inputs
            alpha, sigma = sde.alpha(t), sde.sigma(t)
            eps = jax.random.normal(step_key, mu.shape, mu.dtype)
            _, eps_hat = common.tweedie(prior, alpha * mu + sigma * eps, t)
            grads = jax.grad(loss)(mu, jax.lax.stop_gradient(eps_hat - eps), sigma / alpha)
            updates, opt_state = adam.update(grads, opt_state, mu)
            return (optax.apply_updates(mu, updates), opt_state), None

        keys = jax.random.split(key_i, num_steps - 1)
        (mu, _), _ = jax.lax.scan(step, (mu, adam.init(mu)), (times, keys))
        return mu

    return common.map_measurements(one, operator, y, key)
