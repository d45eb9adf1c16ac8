"""The amortized posterior distillation (APD) objective.

For measurements y_b with operators A_b and z ~ N(0, I), x = G(z, c_b) with c_b = flows.condition_of(A_b, y_b):

    L = mean_{b,k} [ w * (-log p(y_b | x)) - ELBO_prior(x) - log|det dG/dz| ]

-log p(y|x) is the Gaussian negative log-likelihood with its constants (= ||y - A x||^2 / (2 s^2) + const),
w the data weight (1 unless annealed). Since E_q[log N(z)] does not depend on the flow,
L + E[log N(z)] = E_y KL(q(.|y) || p(.|y)) - E_y log p(y) (up to the ELBO gap), which `kl_plus_evidence`
reports.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd import flows
from apd.elbo import elbo
from apd.priors.base import Prior


class APDTerms(NamedTuple):
    """Per-measurement averages, each (B,): the loss is data_weight * fidelity - prior_elbo - logdet."""

    fidelity: jax.Array  # -log p(y|x), nats
    prior_elbo: jax.Array  # lower bound on log p(x), nats
    logdet: jax.Array  # log|det dG/dz|
    log_q: jax.Array  # log q(x|y) = log N(z) - logdet


def repeat_batch(tree: Any, k: int) -> Any:
    """Repeat every leaf k times along the leading axis: (B, ...) -> (B*k, ...), each row k times in a row."""
    return jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), tree)


def apd_terms(
    flow: nn.Module,
    flow_params: Any,
    prior: Prior,
    operators: Any,
    y: jax.Array,
    key: jax.Array,
    num_z: int = 1,
    elbo_draws: int = 1,
) -> APDTerms:
    """Terms of the objective for measurements y (B,*M) with batched operators (leading axis B).

    num_z: flow samples per measurement; elbo_draws: (t, e) draws of the prior bound per sample.
    """
    k_z, k_elbo = jax.random.split(key)
    batch = y.shape[0]
    cond = jax.vmap(flows.condition_of)(operators, y)
    cond_k, ops_k, y_k = repeat_batch((cond, operators, y), num_z)
    z = jax.random.normal(k_z, (batch * num_z,) + tuple(flow.signal_shape))
    x, logdet = flow.apply({"params": flow_params}, z, cond_k)
    log_lik = jax.vmap(lambda op, yy, xx: op.log_likelihood(yy, xx))(ops_k, y_k, x)
    prior_bound = elbo(prior, x, k_elbo, num_draws=elbo_draws)
    log_q = flows.normal_log_prob(z) - logdet

    def per_y(v):
        return jnp.mean(v.reshape(batch, num_z), axis=1)

    return APDTerms(per_y(-log_lik), per_y(prior_bound), per_y(logdet), per_y(log_q))


def apd_loss(terms: APDTerms, data_weight: float | jax.Array = 1.0) -> jax.Array:
    """Scalar loss: mean over measurements of data_weight * fidelity - prior_elbo - logdet."""
    return jnp.mean(data_weight * terms.fidelity - terms.prior_elbo - terms.logdet)


def kl_plus_evidence(terms: APDTerms) -> jax.Array:
    """Estimate of KL(q(.|y) || p(.|y)) - log p(y) per measurement (B,), in nats (the ELBO in place of log p(x))."""
    return terms.log_q + terms.fidelity - terms.prior_elbo


def data_weight_schedule(step: jax.Array, anneal_steps: int) -> jax.Array:
    """Linear ramp of the data weight from 0 to exactly 1 over anneal_steps; 1 throughout when anneal_steps is 0."""
    if anneal_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.clip(step / anneal_steps, 0.0, 1.0)
