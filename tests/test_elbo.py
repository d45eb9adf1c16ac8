"""The prior ELBO keeps every constant: with an exact score it is tight on the exact log-density."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd.elbo import elbo
from apd.priors import GaussianPrior

RNG = np.random.RandomState(3)
D = 8
A = RNG.randn(D, D) / np.sqrt(D)
PRIOR = GaussianPrior.create(0.5 + 0.1 * RNG.randn(D), 0.005 * A @ A.T + 0.0025 * np.eye(D), signal_shape=(D, 1))


@pytest.fixture(scope="module")
def estimates():
    x = PRIOR.sample(jax.random.PRNGKey(0), 64)
    f = jax.jit(lambda x, k: elbo(PRIOR, x, k, num_draws=4000))
    draws = np.stack([np.asarray(f(x, jax.random.PRNGKey(i))) for i in range(5)])
    return x, draws


def test_elbo_equals_exact_log_density_on_average(estimates):
    x, draws = estimates
    log_p = np.asarray(PRIOR.log_prob(x))
    diff = draws.mean(0) - log_p
    standard_error = draws.std(0).mean() / np.sqrt(draws.shape[0]) / np.sqrt(len(log_p))
    # Tight bound with the exact score: the average gap is Monte-Carlo noise, and within 1% of |log p|.
    assert abs(diff.mean()) < 4 * standard_error + 1e-3
    assert abs(diff.mean()) < 0.01 * np.abs(log_p).mean()
    assert np.abs(log_p).mean() > 5.0  # the 1% is of a non-trivial number of nats


def test_elbo_gradient_matches_score_of_the_data_density():
    x = PRIOR.sample(jax.random.PRNGKey(1), 4)
    grad = jax.jit(jax.grad(lambda v, k: elbo(PRIOR, v, k, num_draws=20_000).sum()))
    g = np.mean([np.asarray(grad(x, jax.random.PRNGKey(i))) for i in range(4)], axis=0)
    exact = np.asarray(jax.grad(lambda v: PRIOR.log_prob(v).sum())(x))
    np.testing.assert_allclose(g, exact, rtol=0.05, atol=0.05 * np.abs(exact).mean())


def test_elbo_draws_average_to_single_draw_shape():
    x = jnp.full((3, D, 1), 0.5)
    assert elbo(PRIOR, x, jax.random.PRNGKey(0), num_draws=7).shape == (3,)


def test_bits_per_dim_matches_the_exact_density_within_its_reported_interval():
    from benchmarks.prior_quality import bits_per_dim

    x = np.asarray(PRIOR.sample(jax.random.PRNGKey(2), 32))
    exact = -np.asarray(PRIOR.log_prob(jnp.asarray(x))) / (D * np.log(2))
    per_signal, half_width, draws = bits_per_dim(PRIOR, x, jax.random.PRNGKey(3), 0.05, 32, 50, 500)
    assert per_signal.shape == (32,)
    assert half_width < 0.05 and draws == 500 * (draws // 500) and 1_000 <= draws < 25_000  # stopped early
    assert abs(per_signal.mean() - exact.mean()) < 2 * half_width


def test_stratified_draws_cut_the_variance_of_averaging_independent_draws():
    # In many dimensions the bound varies far more with t than with e: 16 draws stratified in t have a small
    # fraction of the variance of 16 independent single draws (about 1/16 here, 1/40 on the ERA5 prior).
    rng = np.random.RandomState(0)
    d = 512
    prior = GaussianPrior.create(0.5 + 0.1 * rng.randn(d), np.diag(0.001 + 0.01 * rng.rand(d)), signal_shape=(d, 1))
    x = prior.sample(jax.random.PRNGKey(5), 8)
    stratified = jax.jit(lambda k: elbo(prior, x, k, num_draws=16))
    independent = jax.jit(lambda k: elbo(prior, jnp.repeat(x, 16, axis=0), k).reshape(8, 16).mean(1))
    s = np.stack([np.asarray(stratified(jax.random.PRNGKey(i))) for i in range(24)])
    p = np.stack([np.asarray(independent(jax.random.PRNGKey(i))) for i in range(24)])
    assert p.var(0, ddof=1).mean() > 4 * s.var(0, ddof=1).mean()
    log_p = np.asarray(prior.log_prob(x))
    assert abs(s.mean() - log_p.mean()) < 4 * np.sqrt(s.var(0, ddof=1).mean() / s.size)  # still unbiased
