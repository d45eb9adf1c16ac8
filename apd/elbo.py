"""Lower bound on log p(x) of a diffusion prior (Song, Durkan, Murray, Ermon 2021), every constant kept.

For x (B,*S) with d entries each, with x_t = alpha_t x + sigma_t e and t drawn from the importance density
q(t) ∝ beta(t) / sigma_t^2 on [t_min, 1] (normaliser Z):

  -log p(x) <= E[-log N(x_1; 0, I)]                                           (terminal term, closed form)
               + (Z/2) E_{t,e}[ ||sigma_t score(x_t, t) + e||^2 - ||e||^2 + d sigma_t^2 ]   (t_min..1)
               + E_{e'}[ -log N(x; mu_q, q^2 I) ] - (d/2) log(2 pi e sigma_min^2)          (decoder at t_min)

with x_min = alpha_min x + sigma_min e', mu_q = (x_min + sigma_min^2 score(x_min, t_min)) / alpha_min and
q = sigma_min / alpha_min. Gradients flow to x through the score; the noises are fixed draws. The estimate
is unbiased for the bound; with the exact score the bound is tight (E[elbo] = log p(x)).

The K draws of one signal are stratified in t: draw k takes the CDF level (k + u_k) / K of q(t), u_k uniform,
which keeps the estimate unbiased and removes most of its variance (the integrand varies far more with t than
with e: on the ERA5 prior, 4,140 dimensions, 16 stratified draws have 1/40 of the variance of 16 independent
ones). With K = 1 it is the plain draw.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from apd.priors.base import Prior
from apd.sde import _expand


def elbo(prior: Prior, x: jax.Array, key: jax.Array, num_draws: int = 1) -> jax.Array:
    """Monte-Carlo estimate of the lower bound on log p(x) in nats, x (B,*S) -> (B,).

    num_draws: (t, e) draws per signal, stratified in t and averaged; each draw costs two score evaluations per
    signal (one inside the time integral, one for the decoder term), made in a single batched call.
    """
    sde = prior.sde
    batch = x.shape[0]
    d = math.prod(x.shape[1:])
    k_t, k_e, k_dec = jax.random.split(key, 3)

    xs = jnp.repeat(x, num_draws, axis=0)  # (B*K, *S)
    n = xs.shape[0]
    stratum = jnp.tile(jnp.arange(num_draws), batch)  # draw k of each signal, matching jnp.repeat above
    t = sde.importance_time((stratum + jax.random.uniform(k_t, (n,))) / num_draws)
    e = jax.random.normal(k_e, xs.shape, xs.dtype)
    x_t = sde.marginal(xs, t, e)
    t_min = jnp.full((n,), sde.t_min)
    e_dec = jax.random.normal(k_dec, xs.shape, xs.dtype)
    x_min = sde.marginal(xs, t_min, e_dec)

    scores = prior.score(jnp.concatenate([x_t, x_min]), jnp.concatenate([t, t_min]))
    score_t, score_min = scores[:n], scores[n:]

    def sq(v):
        return jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)

    sigma_t = sde.sigma(t)
    integral = 0.5 * sde.importance_normaliser() * (
        sq(_expand(sigma_t, xs) * score_t + e) - sq(e) + d * sigma_t**2
    )

    alpha_min, sigma_min = sde.alpha(sde.t_min), sde.sigma(sde.t_min)
    q = sigma_min / alpha_min
    mu_q = (x_min + sigma_min**2 * score_min) / alpha_min
    decoder_nll = 0.5 * sq(xs - mu_q) / q**2 + 0.5 * d * jnp.log(2 * math.pi * q**2)
    entropy = 0.5 * d * jnp.log(2 * math.pi * math.e * sigma_min**2)

    alpha_1, sigma_1 = sde.alpha(1.0), sde.sigma(1.0)
    terminal_nll = 0.5 * (alpha_1**2 * sq(xs) + d * sigma_1**2) + 0.5 * d * math.log(2 * math.pi)

    neg_bound = terminal_nll + integral + decoder_nll - entropy  # (B*K,)
    return -jnp.mean(neg_bound.reshape(batch, num_draws), axis=1)
