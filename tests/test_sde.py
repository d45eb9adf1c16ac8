"""VPSDE marginals, importance density and samplers against closed forms."""
import math

import jax
import numpy as np
import pytest
from scipy import integrate

from apd.sde import VPSDE
from apd.priors import GaussianPrior

SDE = VPSDE()


def test_marginal_closed_form():
    t = np.array([0.0, 0.1, 0.5, 1.0])
    b = 0.1 * t + 9.95 * t**2
    np.testing.assert_allclose(SDE.integrated_beta(t), b, rtol=1e-6)
    np.testing.assert_allclose(SDE.alpha(t), np.exp(-b / 2), rtol=1e-6)
    np.testing.assert_allclose(SDE.sigma(t) ** 2 + SDE.alpha(t) ** 2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(SDE.alpha(1.0), math.exp(-0.5 * 10.05), rtol=1e-5)
    np.testing.assert_allclose(SDE.time_of_integrated_beta(SDE.integrated_beta(t)), t, atol=1e-6)


def test_marginal_matches_integrated_sde_moments():
    # d/dt E[x] = -beta/2 E[x]; d/dt Var = -beta Var + beta: integrate the ODEs numerically.
    def rhs(t, v):
        m, var = v
        beta = 0.1 + t * 19.9
        return [-0.5 * beta * m, -beta * var + beta]

    sol = integrate.solve_ivp(rhs, (0, 0.7), [2.0, 0.0], rtol=1e-10, atol=1e-12)
    m, var = sol.y[:, -1]
    assert abs(m - 2.0 * float(SDE.alpha(0.7))) < 1e-6
    assert abs(var - float(SDE.sigma(0.7)) ** 2) < 1e-6


def test_importance_density_normalised_and_matches_closed_form():
    z = float(SDE.importance_normaliser())
    b1, b0 = 10.05, 0.1 * 1e-3 + 9.95 * 1e-6
    assert z == pytest.approx(math.log(math.expm1(b1) / math.expm1(b0)), rel=1e-5)
    total, _ = integrate.quad(lambda t: float(SDE.importance_density(t)), 1e-3, 1.0, limit=200, points=[0.01, 0.1])
    assert total == pytest.approx(1.0, abs=1e-4)
    # q(t) = beta(t) / (sigma_t^2 Z) at a point
    t = 0.3
    assert float(SDE.importance_density(t)) == pytest.approx((0.1 + 0.3 * 19.9) / (-math.expm1(-SDE.integrated_beta(t))) / z, rel=1e-5)


def test_importance_sampling_matches_cdf():
    t = np.asarray(SDE.sample_importance_time(jax.random.PRNGKey(0), (200_000,)))
    assert t.min() >= 1e-3 and t.max() <= 1.0
    for q in (0.01, 0.05, 0.3):
        cdf, _ = integrate.quad(lambda s: float(SDE.importance_density(s)), 1e-3, q, limit=200)
        assert np.mean(t <= q) == pytest.approx(cdf, abs=4e-3)


@pytest.mark.parametrize("method", ["euler_maruyama", "ode"])
def test_samplers_reproduce_a_gaussian_prior(method):
    prior = GaussianPrior.create(np.array([0.3, 0.7]), np.array([[0.04, 0.01], [0.01, 0.02]]))
    x = jax.jit(lambda k: SDE.sample(prior.score, k, (4000, 2), num_steps=200, method=method))(jax.random.PRNGKey(1))
    np.testing.assert_allclose(np.mean(x, 0), [0.3, 0.7], atol=0.01)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), [[0.04, 0.01], [0.01, 0.02]], atol=0.004)


def test_unknown_sampler_method():
    with pytest.raises(ValueError, match="unknown sampling method 'heun'"):
        SDE.sample(lambda x, t: x, jax.random.PRNGKey(0), (1, 2), method="heun")
