"""Semi-amortized refinement (apd.refine) on an exact diagonal Gaussian prior, denoising, d = 4, closed-form
posterior: from a flow whose mean is 0.2 off in every entry, 200 steps of the objective on one measurement recover
the posterior mean and bring KL(q || p(.|y)) from about 12 nats to near 0; refining a measurement alone or beside
another gives the same parameters; 0 steps give the parameters back."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd import flows
from apd.flows import ConditionalRealNVP
from apd.operators import Denoise, broadcast_operator
from apd.priors import GaussianPrior
from apd.refine import check, refine, refine_each, score_evaluations

D, S = 4, 0.1
VAR = np.array([0.02, 0.05, 0.01, 0.03])
POST_VAR = 1 / (1 / VAR + 1 / S**2)
OP = Denoise(S, (D, 1))
Y = jnp.asarray([[0.6, 0.3, 0.45, 0.8], [0.4, 0.7, 0.5, 0.2]], jnp.float32).reshape(2, D, 1)
# Measured over 3 keys: mean error <= 0.012 (posterior std 0.06-0.08), KL <= 0.024 nats after 200 steps.
SETTINGS = dict(lr=5e-3, batch_size=64, elbo_draws=4)
NUM_STEPS = 200
N_SAMPLES = 4000  # Monte Carlo std of a mean: 0.08 / 63 = 0.0013


@pytest.fixture(scope="module")
def problem():
    """The prior, the flow and parameters whose output map holds the exact posterior mean plus 0.2 per entry."""
    prior = GaussianPrior.create(np.full(D, 0.5), np.diag(VAR), signal_shape=(D, 1))
    flow = ConditionalRealNVP((D, 1), num_couplings=2, width=8)
    params = flow.init(jax.random.PRNGKey(0), jnp.zeros((1, D, 1)), jnp.zeros((1, D, 1)))["params"]
    params = dict(
        params,
        estimate_gain=jnp.asarray(POST_VAR / S**2, jnp.float32),
        out_shift=jnp.asarray(POST_VAR * 0.5 / VAR + 0.2, jnp.float32),
        out_log_scale=jnp.asarray(0.5 * np.log(POST_VAR), jnp.float32),
    )
    return prior, flow, params


def _mean_error_and_kl(flow, params, y):
    """(max |E_q x - posterior mean|, KL(q || p(.|y)) in nats), Monte Carlo with the flow's exact log-density."""
    mu = POST_VAR * (0.5 / VAR + np.asarray(y).ravel() / S**2)
    cond = jax.tree.map(lambda a: jnp.repeat(a[None], N_SAMPLES, axis=0), flows.condition_of(OP, y))
    x, log_q = flows.sample_and_log_prob(flow, params, jax.random.PRNGKey(9), cond)
    x = np.asarray(x, np.float64).reshape(N_SAMPLES, D)
    log_post = -0.5 * np.sum((x - mu) ** 2 / POST_VAR + np.log(2 * math.pi * POST_VAR), axis=1)
    return float(np.abs(x.mean(0) - mu).max()), float(np.mean(np.asarray(log_q, np.float64) - log_post))


def test_refinement_reaches_the_exact_posterior(problem):
    prior, flow, params = problem
    ops = broadcast_operator(OP, 2)
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    refined = refine_each(flow, params, prior, ops, Y, keys, NUM_STEPS, **SETTINGS)
    assert refined["out_shift"].shape == (2, D)
    for i in range(2):
        start_error, start_kl = _mean_error_and_kl(flow, params, Y[i])
        assert start_error > 0.19 and start_kl > 10.0, (start_error, start_kl)
        error, kl = _mean_error_and_kl(flow, jax.tree.map(lambda a: a[i], refined), Y[i])
        assert error < 0.03, error
        assert -0.01 < kl < 0.1, kl
    # Measurement 0 alone gets the parameters it gets beside measurement 1.
    alone = refine(flow, params, prior, OP, Y[0], keys[0], NUM_STEPS, **SETTINGS)
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(refined)):
        np.testing.assert_allclose(a, b[0], atol=1e-5)


def test_zero_steps_return_the_parameters(problem):
    prior, flow, params = problem
    same = refine(flow, params, prior, OP, Y[0], jax.random.PRNGKey(0), 0, **SETTINGS)
    assert jax.tree.structure(same) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_bad_settings_and_cost():
    with pytest.raises(ValueError, match="refinement steps must be a whole number >= 0, got -1"):
        check(-1, 1e-3)
    with pytest.raises(ValueError, match="refinement learning rate must be positive, got 0.0"):
        check(10, 0.0)
    with pytest.raises(ValueError, match="refinement batch size must be a whole number >= 1, got 0"):
        check(10, 1e-3, 0)
    assert score_evaluations(100, 64) == 100 * 64 * 2
    assert score_evaluations(100, 64, elbo_draws=4) == 100 * 64 * 2 * 4
    assert score_evaluations(100, 64, prior_gradient="score") == 100 * 64
