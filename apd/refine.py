"""Semi-amortized inference (../shared/POSTERIOR_GAP.md, lever 9): a flow refined on ONE measurement by a few
Adam steps of the APD objective, starting from the amortized flow's parameters.

For a measurement y with operator A and c = flows.condition_of(A, y), each step lowers

    L(phi) = mean_b [ -log p(y | x_b) - ELBO(x_b) - log|det dG_phi/dz (z_b, c)| ],   x_b = G_phi(z_b, c)

over batch_size flow samples (`apd.objective`: the flow's training objective on one measurement, with the
estimator options it was trained with). Each measurement gets its own copy of the parameters: `refine_each`
vmaps the whole refinement over N measurements, one compiled call for all. The per-measurement flow baseline
(`apd.baselines.flow`) runs the same steps (`fit_measurement`) from a fresh initialisation.

    params = refine(flow, params, prior, op, y, key, num_steps=100, lr=1e-4)             # one y (*M)
    params_n = refine_each(flow, params, prior, ops, y, keys, num_steps=100, lr=1e-4)    # y (N,*M): leaves (N, ...)

Cost per measurement: `score_evaluations` = num_steps * batch_size * 2 * elbo_draws score evaluations, each
with a backward pass (prior_gradient='score': num_steps * batch_size, without one).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from apd.objective import Estimate, apd_loss, apd_terms, as_estimate
from apd.optim import make_optimizer
from apd.priors.base import Prior

LR = 1e-4  # Adam learning rate; on digits every lr from 1e-5 to 1e-3 lowered PSNR (docs/results/ablations.md)
BATCH_SIZE = 64  # flow samples per refinement step
GRAD_CLIP = 1.0  # global gradient-norm clip, as in the flow's training
MAX_ROWS = 1024  # flow samples (measurements x batch_size) per refinement call: a bound on memory


def fit_measurement(
    flow: nn.Module,
    params: Any,
    tx: optax.GradientTransformation,
    prior: Prior,
    operator: Any,
    y: jax.Array,
    key: jax.Array,
    num_steps: int,
    num_z: int,
    data_weight: Callable[[jax.Array], jax.Array] | None = None,
    **estimator,
) -> tuple[Any, jax.Array]:
    """(params, loss (num_steps,)): num_steps steps of tx from params on the APD loss of ONE measurement y (*M)
    with its operator (no batch axis), num_z flow samples per step.

    Step k draws with the k-th key of split(key, num_steps) and weighs the fidelity by data_weight(k) (default 1);
    estimator: apd_terms' estimator keywords. Pure and jit-able.
    """
    op_1, y_1 = jax.tree.map(lambda a: a[None], (operator, y))  # apd_terms takes a batch of measurements

    def step(carry, inputs):
        params, opt_state = carry
        k, step_key = inputs
        weight = 1.0 if data_weight is None else data_weight(k)
        loss, grads = jax.value_and_grad(
            lambda p: apd_loss(apd_terms(flow, p, prior, op_1, y_1, step_key, num_z=num_z, **estimator), weight)
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    inputs = (jnp.arange(num_steps), jax.random.split(key, num_steps))
    (params, _), loss = jax.lax.scan(step, (params, tx.init(params)), inputs)
    return params, loss


def check(num_steps: int, lr: float, batch_size: int = BATCH_SIZE) -> None:
    """Raise ValueError (one line) for a negative step count or a non-positive learning rate or batch size."""
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"refinement steps must be a whole number >= 0, got {num_steps}")
    if not lr > 0:
        raise ValueError(f"refinement learning rate must be positive, got {lr}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"refinement batch size must be a whole number >= 1, got {batch_size}")


def refine_each(
    flow: nn.Module,
    params: Any,
    prior: Prior,
    operators: Any,
    y: jax.Array,
    keys: jax.Array,
    num_steps: int,
    *,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    estimate: str | Estimate = "pinv",
    **estimator,
) -> Any:
    """The parameters refined on each of N measurements y (N,*M) with operators (leading axis N), measurement i
    with keys[i] (keys (N, 2)) alone: every leaf gets a leading axis N.

    Adam (global norm clipped to GRAD_CLIP, no warm-up) at lr from params, num_steps steps of batch_size flow
    samples; estimate: the flow's (`apd.objective.conditions`); estimator: apd_terms' estimator keywords
    (apd.objective.estimator_options of the flow's training).
    Compiled once per shape, step count, batch size and estimator; lr is traced. num_steps = 0 returns params.
    """
    check(num_steps, lr, batch_size)
    return _refine_each(flow, params, prior, operators, y, keys, jnp.float32(lr), as_estimate(estimate),
                        num_steps=int(num_steps), batch_size=int(batch_size), estimator=tuple(sorted(estimator.items())))


def refine(flow: nn.Module, params: Any, prior: Prior, operator: Any, y: jax.Array, key: jax.Array, num_steps: int,
           **options) -> Any:
    """The parameters refined on ONE measurement y (*M) with its operator (no batch axis) and key (2,): `refine_each`
    of that measurement alone (options: its keywords)."""
    one = jax.tree.map(lambda a: a[None], (operator, y, key))
    return jax.tree.map(lambda a: a[0], refine_each(flow, params, prior, *one, num_steps, **options))


def per_call(batch_size: int = BATCH_SIZE) -> int:
    """Measurements to refine in one call: MAX_ROWS // batch_size, at least 1."""
    return max(1, MAX_ROWS // int(batch_size))


def score_evaluations(num_steps: int, batch_size: int = BATCH_SIZE, elbo_draws: int = 1,
                      prior_gradient: str = "elbo") -> int:
    """Score evaluations of refining one measurement: each ELBO draw calls the score twice (the time integral and
    the decoder term), prior_gradient='score' once per sample."""
    per_sample = 1 if prior_gradient == "score" else 2 * elbo_draws
    return int(num_steps) * int(batch_size) * per_sample


@functools.partial(jax.jit, static_argnames=("flow", "num_steps", "batch_size", "estimator"))
def _refine_each(flow, params, prior, operators, y, keys, lr, estimate, num_steps, batch_size, estimator):
    tx = make_optimizer(ml_collections.ConfigDict(dict(lr=lr, warmup_steps=0, grad_clip=GRAD_CLIP)))

    def one(op, y_i, key_i):
        return fit_measurement(flow, params, tx, prior, op, y_i, key_i, num_steps, batch_size, estimate=estimate,
                               **dict(estimator))[0]

    return jax.vmap(one)(operators, y, keys)
