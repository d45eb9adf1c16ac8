"""Exact pieces of the mixture-posterior benchmark: the closed-form mixture posterior and the sliced Wasserstein distance."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd.eval.metrics import sliced_wasserstein, unit_directions
from apd.priors import GaussianMixturePrior, GaussianPrior

RNG = np.random.RandomState(0)
D = 3
MATRIX = RNG.randn(2, D)
COV = np.array([[0.5, 0.1, 0.0], [0.1, 0.4, 0.2], [0.0, 0.2, 0.6]])
MEAN = np.array([0.2, -0.1, 0.4])


def test_one_component_posterior_is_the_gaussian_posterior():
    y = np.array([0.3, -0.5])
    gauss = GaussianPrior.create(MEAN, COV).posterior(MATRIX, y, 0.2)
    mix = GaussianMixturePrior.create([1.0], MEAN[None], COV[None]).posterior(MATRIX, y, 0.2)
    np.testing.assert_allclose(mix.means[0], gauss.mean, rtol=1e-5)
    cov = (mix.eigvecs[0] * mix.eigvals[0]) @ mix.eigvecs[0].T
    np.testing.assert_allclose(cov, gauss.cov, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mix.log_weights, [0.0])


def test_mixture_posterior_against_numerical_integration():
    """1-D prior 0.3 N(-1, 0.25) + 0.7 N(2, 1), y = 2 x + N(0, 0.5^2): weights, means and variances of p(x | y)
    against sums over a fine grid of x."""
    prior = GaussianMixturePrior.create([0.3, 0.7], [[-1.0], [2.0]], [[[0.25]], [[1.0]]])
    y = 1.0
    post = prior.posterior([[2.0]], [y], 0.5)
    grid = np.linspace(-8.0, 10.0, 200_001)
    components = []
    for w, m, v in [(0.3, -1.0, 0.25), (0.7, 2.0, 1.0)]:
        components.append(w * np.exp(-0.5 * (grid - m) ** 2 / v) / math.sqrt(2 * math.pi * v))
    likelihood = np.exp(-0.5 * (y - 2.0 * grid) ** 2 / 0.25)
    joint = [c * likelihood for c in components]  # p(k, x | y) up to one constant
    total = sum(j.sum() for j in joint)
    weights = np.exp(np.asarray(post.log_weights, np.float64))
    for k, j in enumerate(joint):
        mass = j.sum() / total
        mean = (grid * j).sum() / j.sum()
        var = ((grid - mean) ** 2 * j).sum() / j.sum()
        np.testing.assert_allclose(weights[k], mass, rtol=1e-5)
        np.testing.assert_allclose(float(post.means[k, 0]), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(post.eigvals[k, 0]), var, rtol=1e-4)
    # Closed form of component 0: Sigma = 1 / (4 + 16) = 0.05, mu = 0.05 (-4 + 8) = 0.2.
    np.testing.assert_allclose([float(post.means[0, 0]), float(post.eigvals[0, 0])], [0.2, 0.05], rtol=1e-6)


def test_mixture_posterior_responsibilities_equal_the_prior_ones():
    """p(k | x, y) = p(k | x): the likelihood does not depend on the component."""
    covs = np.stack([COV, 0.3 * np.eye(D), np.diag([0.2, 0.5, 0.3])])
    prior = GaussianMixturePrior.create([0.5, 0.3, 0.2], np.stack([MEAN, -MEAN, np.ones(D)]), covs)
    post = prior.posterior(MATRIX, np.array([1.0, 0.2]), 0.3)
    x = jnp.asarray(RNG.randn(5, D), jnp.float32)
    np.testing.assert_allclose(post.responsibilities(x), prior.responsibilities(x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.sum(np.asarray(prior.responsibilities(x)), axis=1), np.ones(5), rtol=1e-6)


def test_sliced_wasserstein_exact_values():
    a = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (50, 4, 1)))
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, a[::-1]) == pytest.approx(0.0, abs=1e-12)  # order of samples does not matter
    # 1-D: directions are +-1, so a shift by c gives |c|; {0, 1} vs {0, 3}: sorted gaps 0, 2 -> sqrt(2).
    line = np.linspace(0.0, 1.0, 7)[:, None]
    assert sliced_wasserstein(line, line - 0.3) == pytest.approx(0.3, rel=1e-12)
    assert sliced_wasserstein([[0.0], [1.0]], [[3.0], [0.0]]) == pytest.approx(math.sqrt(2.0), rel=1e-12)
    # A shift by c in d dimensions: W2 = |<c, u>| along direction u, so SW = sqrt(mean_u <c, u>^2).
    c = np.array([0.5, -1.0, 0.0, 2.0])
    dirs = unit_directions(4, 128, seed=3)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), np.ones(128), rtol=1e-12)
    expected = math.sqrt(np.mean((dirs @ c) ** 2))
    assert sliced_wasserstein(a, a + c.reshape(4, 1), seed=3) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="same K"):
        sliced_wasserstein(a, a[:10])


def test_baselines_take_a_matrix_operator():
    """PiGDM's noisy guidance through Matrix's SVD form is the dense r^2 A^T (r^2 A A^T + s^2 I)^-1 residual;
    every baseline the benchmark runs accepts a batch of Matrix operators."""
    from apd.baselines import get_baseline
    from apd.baselines.pigdm import guidance_vector
    from apd.operators import Matrix, broadcast_operator

    op = Matrix.create(MATRIX, 0.2, (D, 1))
    x0, y = jnp.asarray(RNG.randn(D, 1), jnp.float32), jnp.array([0.3, -0.5])
    residual = np.asarray(y) - MATRIX @ np.asarray(x0)[:, 0]
    expected = 0.7 * MATRIX.T @ np.linalg.solve(0.7 * MATRIX @ MATRIX.T + 0.04 * np.eye(2), residual)
    np.testing.assert_allclose(guidance_vector(op, y, x0, 0.7)[:, 0], expected, rtol=1e-4, atol=1e-6)

    prior = GaussianMixturePrior.create([0.5, 0.5], np.stack([MEAN, -MEAN]), np.stack([COV, COV]), (D, 1))
    ops, ys = broadcast_operator(op, 2), jnp.stack([y, -y])
    steps = {"dps": 4, "mcg": 4, "pigdm": 4, "cpigdm": 2, "ddrm": 4, "reddiff": 4}
    for name, extra in [("cpigdm", {"first_order_noise": True})] + [(n, {}) for n in steps]:
        samples, nfe = get_baseline(name).solve(prior, ops, ys, jax.random.PRNGKey(0), num_steps=steps[name], **extra)
        assert samples.shape == (2, D, 1) and np.all(np.isfinite(samples)), name
