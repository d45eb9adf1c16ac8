"""Exact priors: analytic diffused scores equal autodiff of the diffused log-densities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd.priors import GaussianMixturePrior, GaussianPrior, tweedie_mean
from apd.sde import VPSDE

RNG = np.random.RandomState(0)
D = 5
A = RNG.randn(D, D) / 3
COV = A @ A.T + 0.05 * np.eye(D)
MEAN = RNG.rand(D)


def diffused_gaussian(mean, cov, t, sde=VPSDE()):
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    return GaussianPrior.create(a * mean, a**2 * cov + s**2 * np.eye(len(mean)))


def test_gaussian_log_prob_closed_form():
    prior = GaussianPrior.create(MEAN, COV)
    x = RNG.rand(3, D)
    r = x - MEAN
    expected = -0.5 * (np.einsum("bi,ij,bj->b", r, np.linalg.inv(COV), r) + np.linalg.slogdet(COV)[1] + D * math.log(2 * math.pi))
    np.testing.assert_allclose(prior.log_prob(jnp.asarray(x)), expected, rtol=1e-5)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.4, 1.0])
def test_gaussian_score_is_gradient_of_diffused_log_density(t):
    prior = GaussianPrior.create(MEAN, COV, signal_shape=(D, 1))
    x = jnp.asarray(RNG.randn(4, D, 1), jnp.float32)
    diffused = diffused_gaussian(MEAN, COV, t)
    auto = jax.grad(lambda v: diffused.log_prob(v.reshape(4, D)).sum())(x)
    np.testing.assert_allclose(prior.score(x, jnp.full((4,), t)), auto, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.9])
def test_mixture_score_is_gradient_of_diffused_log_density(t):
    covs = np.stack([COV, 0.5 * np.eye(D), np.diag(RNG.rand(D) + 0.1)])
    means = np.stack([MEAN, -MEAN, np.zeros(D)])
    weights = np.array([0.5, 0.3, 0.2])
    prior = GaussianMixturePrior.create(weights, means, covs)
    sde = prior.sde
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    diffused = GaussianMixturePrior.create(weights, a * means, a**2 * covs + s**2 * np.eye(D))
    x = jnp.asarray(RNG.randn(6, D), jnp.float32)
    auto = jax.grad(lambda v: diffused.log_prob(v).sum())(x)
    np.testing.assert_allclose(prior.score(x, jnp.full((6,), t)), auto, rtol=2e-4, atol=2e-4)


def test_mixture_log_prob_is_weighted_sum_and_samples_match_moments():
    covs = np.stack([0.01 * np.eye(2), 0.04 * np.eye(2)])
    means = np.array([[0.0, 0.0], [1.0, 1.0]])
    prior = GaussianMixturePrior.create([0.25, 0.75], means, covs)
    x = jnp.array([[0.1, -0.2]])
    comps = [GaussianPrior.create(m, c).log_prob(x) for m, c in zip(means, covs)]
    expected = np.log(0.25 * np.exp(comps[0]) + 0.75 * np.exp(comps[1]))
    np.testing.assert_allclose(prior.log_prob(x), expected, rtol=1e-5)
    samples = np.asarray(prior.sample(jax.random.PRNGKey(0), 40_000))
    np.testing.assert_allclose(samples.mean(0), [0.75, 0.75], atol=0.01)


def test_gaussian_samples_and_tweedie():
    prior = GaussianPrior.create(MEAN, COV)
    x = np.asarray(prior.sample(jax.random.PRNGKey(0), 50_000))
    np.testing.assert_allclose(x.mean(0), MEAN, atol=0.01)
    np.testing.assert_allclose(np.cov(x.T), COV, atol=0.03)  # MC error ~0.009 on the largest variance
    # Tweedie mean = m + alpha C Sigma_t^{-1} (x_t - alpha m)
    t, xt = 0.3, jnp.asarray(RNG.randn(2, D), jnp.float32)
    a, s = float(prior.sde.alpha(t)), float(prior.sde.sigma(t))
    sig_t = a**2 * COV + s**2 * np.eye(D)
    expected = MEAN + (a * COV @ np.linalg.solve(sig_t, (np.asarray(xt) - a * MEAN).T)).T
    np.testing.assert_allclose(tweedie_mean(prior, xt, jnp.full((2,), t)), expected, rtol=1e-4, atol=1e-4)


def test_bad_covariances_are_refused():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianPrior.create(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="does not hold 3 entries"):
        GaussianPrior.create(np.zeros(3), np.eye(3), signal_shape=(2, 2))
