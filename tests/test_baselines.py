"""Baselines on exact Gaussian problems (METHODS.md sanity checks), d = 4 signals of shape (4, 1).

Every check compares with a closed form or a measured regression value; compiled samplers are shared through
module-level fixtures (one compile per sampler and shape keeps the file fast).
"""
import inspect
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from apd.baselines import BASELINES, common, get_baseline, requirements
from apd.operators import Denoise, Inpaint, broadcast_operator
from apd.priors import GaussianPrior
from apd.sde import VPSDE

SHAPE = (4, 1)
MEAN = np.array([0.1, -0.2, 0.3, 0.0])
COV = np.array([[1.0, 0.5, 0.3, 0.1], [0.5, 1.0, 0.4, 0.2], [0.3, 0.4, 1.0, 0.5], [0.1, 0.2, 0.5, 1.0]])
MASK = jnp.array([1.0, 1.0, 0.0, 0.0]).reshape(SHAPE)  # coordinates 0, 1 observed
X_TRUE = np.array([0.8, 0.4, 0.0, 0.0])
N = 2000  # samples of the statistical checks; the Monte Carlo std of a mean is about 1/sqrt(N) = 0.022
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def prior():
    return GaussianPrior.create(MEAN, COV, SHAPE)


def _repeat(op, y, n=N):
    """n copies of one measurement (zero-filled y of shape S) and its operator."""
    return broadcast_operator(op, n), jnp.broadcast_to(jnp.asarray(y, jnp.float32).reshape(SHAPE), (n,) + SHAPE)


def _flat(x):
    return np.asarray(x, np.float64).reshape(x.shape[0], -1)


def _posterior(mask, s_y, y, prior_cov=COV):
    """Exact posterior mean and covariance of x | y for zero-filled inpainting y = mask (x + n), prior N(MEAN,
    prior_cov) (METHODS 1.6)."""
    a = np.diag(np.asarray(mask).ravel())
    cov = np.linalg.inv(np.linalg.inv(prior_cov) + a.T @ a / s_y**2)
    return cov @ (np.linalg.solve(prior_cov, MEAN) + a.T @ y / s_y**2), cov


# --------------------------------------------------------------------------------------------------------
# Common plumbing


def test_grids():
    np.testing.assert_allclose(common.full_grid(4), [1.0, 0.75, 0.5, 0.25, 0.0])
    grid = common.skip_grid(20)
    assert grid.shape == (21,)
    np.testing.assert_allclose(grid[[0, 1, -2, -1]], [0.951, 0.901, 0.001, 0.0])
    np.testing.assert_allclose(common.skip_grid(1000)[[0, 1, -2]], [1.0, 0.999, 0.001])
    with pytest.raises(ValueError, match="num_steps"):
        common.skip_grid(0)


def test_steps_closed_forms():
    """DDPM mean/variance (METHODS 1.4) at one (t, s); the step to s = 0 returns x0_hat; DDIM(1) noise = beta_tilde."""
    sde = VPSDE()
    t, s = 0.5, 0.3
    abar_t, abar_s = float(sde.alpha(t)) ** 2, float(sde.alpha(s)) ** 2
    beta = 1 - abar_t / abar_s
    x, x0 = jnp.full(SHAPE, 0.7), jnp.full(SHAPE, -0.2)
    zero_key_noise = np.asarray(jax.random.normal(KEY, SHAPE))
    mean = math.sqrt(abar_s) * beta / (1 - abar_t) * -0.2 + math.sqrt(1 - beta) * (1 - abar_s) / (1 - abar_t) * 0.7
    beta_tilde = (1 - abar_s) / (1 - abar_t) * beta
    out = common.ddpm_step(sde, x, x0, t, s, KEY)
    np.testing.assert_allclose(out, mean + math.sqrt(beta_tilde) * zero_key_noise, rtol=1e-5)
    np.testing.assert_allclose(common.ddpm_step(sde, x, x0, t, 0.0, KEY), x0, atol=1e-6)
    eps = jnp.full(SHAPE, 0.4)
    ddim = common.ddim_step(sde, x0, eps, t, s, 1.0, KEY)
    expect = math.sqrt(abar_s) * -0.2 + math.sqrt(1 - abar_s - beta_tilde) * 0.4 + math.sqrt(beta_tilde) * zero_key_noise
    np.testing.assert_allclose(ddim, expect, rtol=1e-5)


def test_tweedie_and_vjps_exact(prior):
    """x0_hat = m + alpha C Sigma^-1 (x - alpha m), J = alpha C Sigma^-1, J_eps = sigma Sigma^-1 (METHODS 1.6)."""
    t = 0.3
    alpha, sigma = float(prior.sde.alpha(t)), float(prior.sde.sigma(t))
    sigma_t = alpha**2 * COV + sigma**2 * np.eye(4)
    x, v = np.array([0.5, -1.0, 2.0, 0.3]), np.array([1.0, 2.0, -1.0, 0.5])
    x0_hat, eps_hat, jtv = common.vjp_x0(prior, jnp.asarray(x, jnp.float32).reshape(SHAPE), t, jnp.asarray(v).reshape(SHAPE))
    np.testing.assert_allclose(np.ravel(x0_hat), MEAN + alpha * COV @ np.linalg.solve(sigma_t, x - alpha * MEAN), atol=1e-5)
    np.testing.assert_allclose(np.ravel(eps_hat), sigma * np.linalg.solve(sigma_t, x - alpha * MEAN), atol=1e-5)
    np.testing.assert_allclose(np.ravel(jtv), alpha * np.linalg.solve(sigma_t, COV @ v), atol=1e-5)
    _, _, jeps_v = common.vjp_eps(prior, jnp.asarray(x, jnp.float32).reshape(SHAPE), t, jnp.asarray(v).reshape(SHAPE))
    np.testing.assert_allclose(np.ravel(jeps_v), sigma * np.linalg.solve(sigma_t, v), atol=1e-5)


@jax.jit
def _reference_sampler(prior, y, key):
    """DDPM loop (200 steps) with the exact conditional Tweedie estimate (METHODS 1.6), noisy inpainting s_y = 0.1:
    x0_hat + (sigma_t^2 / alpha_t) J^T A^T K_t^-1 (y - A x0_hat), K_t = A Cov[x0|x_t] A^T + s_y^2 I."""
    a, s_y, cov = jnp.diag(MASK.ravel()), 0.1, jnp.asarray(COV, jnp.float32)
    grid = jnp.asarray(common.full_grid(200), jnp.float32)

    def step(x, inputs):  # x (N, 4): the matrices depend on t only
        t, s, k = inputs
        alpha, sigma = prior.sde.alpha(t), prior.sde.sigma(t)
        sigma_t_inv = jnp.linalg.inv(alpha**2 * cov + sigma**2 * jnp.eye(4))
        k_t = a @ (sigma**2 * cov @ sigma_t_inv) @ a.T + s_y**2 * jnp.eye(4)
        gain = sigma**2 / alpha * (alpha * cov @ sigma_t_inv).T @ a.T @ jnp.linalg.inv(k_t)
        x0_hat = jax.vmap(lambda xi: common.tweedie(prior, xi.reshape(SHAPE), t)[0].ravel())(x)
        x0_cond = x0_hat + (y - x0_hat @ a.T) @ gain.T
        return common.ddpm_step(prior.sde, x, x0_cond, t, s, k), None

    init_key, steps_key = jax.random.split(key)
    x, _ = jax.lax.scan(step, jax.random.normal(init_key, (N, 4)), (grid[:-1], grid[1:], jax.random.split(steps_key, 200)))
    return x


def test_reference_sampler_matches_exact_posterior(prior):
    """Validates the DDPM plumbing: mean error < 0.05, relative covariance error < 15% (200 steps, 2000 samples)."""
    y = MASK.ravel() * X_TRUE + np.array([0.05, -0.03, 0.0, 0.0])
    xs = np.asarray(_reference_sampler(prior, jnp.asarray(y, jnp.float32), KEY), np.float64)
    mu, cov = _posterior(MASK, 0.1, y)
    assert np.abs(xs.mean(0) - mu).max() < 0.05
    assert np.linalg.norm(np.cov(xs.T) - cov) / np.linalg.norm(cov) < 0.15


def test_map_measurements_rejects_unbatched_operator(prior):
    op = Inpaint(MASK, 0.05)  # not broadcast to the batch of 3
    with pytest.raises(ValueError, match="broadcast_operator"):
        get_baseline("dps").solve(prior, op, jnp.zeros((3,) + SHAPE), KEY, num_steps=2)


# --------------------------------------------------------------------------------------------------------
# DPS


@pytest.fixture(scope="module")
def dps_runs(prior):
    """DPS, 200 steps, no clipping (the prior is not confined to [0,1]), noisy inpainting s_y = 0.05."""
    op, y = _repeat(Inpaint(MASK, 0.05), MASK.ravel() * X_TRUE)
    dps = get_baseline("dps")
    return {zeta: dps.solve(prior, op, y, KEY, zeta=zeta, num_steps=200, clip=False) for zeta in (0.0, 0.02, 0.1)}


def test_dps_zeta_zero_samples_the_prior(dps_runs):
    samples, nfe = dps_runs[0.0]
    xs = _flat(samples)
    assert nfe == 200 and xs.shape == (N, 4)
    assert np.abs(xs.mean(0) - MEAN).max() < 0.07  # 3 Monte Carlo std
    assert np.abs(np.cov(xs.T) - COV).max() < 0.1  # std of a covariance entry ~ sqrt(2/N) = 0.03


def test_dps_fits_the_measurement(dps_runs):
    """||y - A x|| falls far below its prior value and grows back as zeta -> 0 (METHODS 2.5: qualitative only)."""
    residual = {z: np.linalg.norm(_flat(s)[:, :2] - X_TRUE[:2], axis=1).mean() for z, (s, _) in dps_runs.items()}
    assert residual[0.0] > 1.2  # prior draws: E||x_o - y_o|| ~ 1.4
    assert residual[0.1] < 0.1  # about the noise level s_y sqrt(2) = 0.07
    assert residual[0.1] < residual[0.02] < residual[0.0]


# --------------------------------------------------------------------------------------------------------
# MCG


@pytest.fixture(scope="module")
def mcg_runs(prior):
    """Noiseless inpainting, 200 DDPM steps, no clipping, output-level noised y (and one official input-level run)."""
    op, y = _repeat(Inpaint(MASK, 0.0), MASK.ravel() * X_TRUE)
    mcg = get_baseline("mcg")
    runs = {
        a: mcg.solve(prior, op, y, KEY, alpha_step=a, num_steps=200, clip=False, y_noise_time="output")
        for a in (0.0, 0.03, 0.1)
    }
    runs["input"] = mcg.solve(prior, op, y, KEY, alpha_step=0.03, num_steps=200, clip=False)
    return runs


def _true_missing_mean():
    o, u = [0, 1], [2, 3]
    return MEAN[u] + COV[np.ix_(u, o)] @ np.linalg.solve(COV[np.ix_(o, o)], X_TRUE[o] - MEAN[o])  # (0.593, 0.120)


def test_mcg_observed_entries(mcg_runs):
    """Output-level noise: observed entries equal y; official input-level: within a few sigma_{t_1} = 0.0105 of y."""
    np.testing.assert_allclose(_flat(mcg_runs[0.03][0])[:, :2], np.broadcast_to(X_TRUE[:2], (N, 2)), atol=1e-6)
    deviation = _flat(mcg_runs["input"][0])[:, :2] - X_TRUE[:2]
    sigma_t1 = float(VPSDE().sigma(1 / 200))
    assert abs(deviation.std() - sigma_t1) < 0.1 * sigma_t1


def test_mcg_posterior_mean(mcg_runs):
    """Measured (200 steps, 2000 samples): missing means (0.50, 0.06) at alpha_step 0 (replacement, biased),
    (0.59, 0.11) at 0.03, (0.82, 0.25) at 0.1; truth (0.593, 0.120). The gradient first removes the bias and then
    overshoots (METHODS 3.5), so alpha_step 0.03 is checked within 0.05 (2 Monte Carlo std), the others for bias."""
    truth = _true_missing_mean()
    means = {a: _flat(mcg_runs[a][0])[:, 2:].mean(0) for a in (0.0, 0.03, 0.1)}
    assert np.abs(means[0.03] - truth).max() < 0.05
    assert means[0.0][0] < truth[0] - 0.06 and means[0.1][0] > truth[0] + 0.15
    assert mcg_runs[0.0][1] == 200


# --------------------------------------------------------------------------------------------------------
# DDRM


@pytest.fixture(scope="module")
def unit_prior():
    return GaussianPrior.create(MEAN, np.eye(4), SHAPE)


@pytest.fixture(scope="module")
def ddrm_runs(unit_prior):
    """Prior N(m, I), inpainting of coordinates 0 and 1 with s_y = 0.1, K = 20, 4 x 2000 samples (METHODS 6.5)."""
    y = MASK.ravel() * np.array([1.0, -0.95, 0.0, 0.0])
    op, ys = _repeat(Inpaint(MASK, 0.1), y, 4 * N)
    ddrm = get_baseline("ddrm")
    return y, {eta: ddrm.solve(unit_prior, op, ys, KEY, eta=eta) for eta in (0.0, 0.85)}


def test_ddrm_regression_values(ddrm_runs):
    """METHODS 6.5 (float64 harness, 20000 samples) at K = 20: missing variance 0.84 (eta 0), 0.64 (eta 0.85);
    observed means match the posterior to ~0.01-0.02; observed variance 0.016-0.018 (posterior 0.0099).
    Measured here (float32, 8000 samples; Monte Carlo std of a variance ~1.6% of it): missing variance 0.835, 0.829
    (eta 0) and 0.623, 0.632 (eta 0.85); observed means (0.973, -0.928) vs the exact (0.991, -0.943), i.e. DDRM
    keeps ~2% of the prior pull y - m; observed variance 0.016 (eta 0), 0.018 (eta 0.85)."""
    y, runs = ddrm_runs
    mu, cov = _posterior(MASK, 0.1, y, prior_cov=np.eye(4))
    for eta, missing_var, observed_var in ((0.0, 0.84, 0.016), (0.85, 0.64, 0.018)):
        xs, nfe = runs[eta]
        xs = _flat(xs)
        assert nfe == 20
        assert abs(xs[:, 2:].var(0).mean() - missing_var) < 0.025
        np.testing.assert_allclose(xs[:, 2:].mean(0), MEAN[2:], atol=0.04)
        np.testing.assert_allclose(xs[:, :2].mean(0), mu[:2], atol=0.025)
        np.testing.assert_allclose(xs[:, :2].var(0), observed_var, atol=0.0015)
    assert abs(cov[0, 0] - 0.0099) < 1e-4  # DDRM's observed spread is not the posterior's


def test_ddrm_refuses_operator_without_svd(unit_prior):
    with pytest.raises(ValueError, match="DDRM needs an operator with an SVD form .*; _Square has none"):
        get_baseline("ddrm").solve(unit_prior, _Square(), jnp.zeros((1,) + SHAPE), KEY)


@struct.dataclass
class _Square:
    """A nonlinear operator with no pseudo-inverse and no SVD: y = x^2."""

    noise_std: float = struct.field(pytree_node=False, default=0.1)
    linear = False

    def apply(self, x):
        return x**2


# --------------------------------------------------------------------------------------------------------
# RED-diff


def test_reddiff_lambda_zero_returns_pinv(prior):
    """With lam = 0 the Adam gradient is zero at A^+ y for y in range(A): the output is A^+ y exactly."""
    y = MASK.ravel() * X_TRUE
    op, ys = _repeat(Inpaint(MASK, 0.05), y, 8)
    out, nfe = get_baseline("reddiff").solve(prior, op, ys, KEY, lam=0.0, num_steps=50)
    assert nfe == 49
    np.testing.assert_array_equal(_flat(out), np.broadcast_to(y, (8, 4)).astype(np.float32))


@pytest.fixture(scope="module")
def reddiff_run(prior):
    """Default lam and lr, 50 steps, 8 copies of one noisy inpainting measurement."""
    op, ys = _repeat(Inpaint(MASK, 0.05), MASK.ravel() * X_TRUE, 8)
    return get_baseline("reddiff").solve(prior, op, ys, KEY, num_steps=50)


def test_reddiff_fits_observed_and_refuses_no_pinv(prior, reddiff_run):
    """With the default lam the observed entries stay near y (data term), missing ones move from A^+ y = 0.

    Missing entries over the 8 keys, measured: spread 0.23, 0.27 (optimiser noise, a quarter of the posterior
    std 0.91, 0.98), mean 0.36, -0.05 against the posterior mean 0.59, 0.12 (standard error of the mean 0.09).
    """
    out = _flat(reddiff_run[0])
    assert np.abs(out[:, :2] - X_TRUE[:2]).max() < 0.1
    mu, _ = _posterior(MASK, 0.05, MASK.ravel() * X_TRUE)
    spread = out[:, 2:].std(0)
    assert np.all((spread > 0.1) & (spread < 0.5)), spread
    assert np.abs(out[:, 2:].mean(0) - mu[2:]).max() < 0.35
    with pytest.raises(ValueError, match="RED-diff needs an operator with a pseudo-inverse"):
        get_baseline("reddiff").solve(prior, _Square(), jnp.zeros((1,) + SHAPE), KEY)


def test_reddiff_denoising_identity(prior):
    """E_eps[eps_hat(alpha mu + sigma eps, t) - eps] = alpha sigma Sigma_t^-1 (mu - m) (METHODS 7.5), 20000 draws."""
    t, mu = 0.4, np.array([0.6, 0.1, -0.5, 0.9])
    alpha, sigma = float(prior.sde.alpha(t)), float(prior.sde.sigma(t))
    eps = jax.random.normal(KEY, (20000,) + SHAPE)
    x_t = alpha * jnp.asarray(mu, jnp.float32).reshape(SHAPE) + sigma * eps
    eps_hat = jax.jit(jax.vmap(lambda x: common.tweedie(prior, x, t)[1]))(x_t)
    mc = _flat(eps_hat - eps).mean(0)
    exact = alpha * sigma * np.linalg.solve(alpha**2 * COV + sigma**2 * np.eye(4), mu - MEAN)
    np.testing.assert_allclose(mc, exact, atol=0.02)  # Monte Carlo std ~ 0.006


# --------------------------------------------------------------------------------------------------------
# Noise2Score


def test_noise2score_is_the_exact_posterior_mean(prior):
    """x_hat = m + C (C + s^2 I)^-1 (y - m) for the exact Gaussian score (float32: 1e-4)."""
    s_y = 0.1
    ys = np.array([[0.3, 0.2, 0.9, 0.5], [0.7, -0.1, 0.4, 0.0]])
    out, nfe = get_baseline("noise2score").solve(
        prior, broadcast_operator(Denoise(s_y, SHAPE), 2), jnp.asarray(ys, jnp.float32).reshape((2,) + SHAPE), KEY, clip=False
    )
    exact = MEAN + (COV @ np.linalg.solve(COV + s_y**2 * np.eye(4), (ys - MEAN).T)).T
    assert nfe == 1
    np.testing.assert_allclose(_flat(out), exact, atol=1e-4)


def test_noise2score_refuses_inpainting_and_reports_clamp(prior):
    with pytest.raises(ValueError, match=r"Noise2Score needs the denoising operator Denoise \(A = I\); Inpaint is not"):
        get_baseline("noise2score").solve(prior, broadcast_operator(Inpaint(MASK, 0.1), 1), jnp.zeros((1,) + SHAPE), KEY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys = jnp.full((1,) + SHAPE, 0.5)
        out, _ = get_baseline("noise2score").solve(prior, broadcast_operator(Denoise(0.005, SHAPE), 1), ys, KEY)
    assert any("below t_min" in str(w.message) for w in caught)
    assert np.abs(np.asarray(out) - 0.5).max() < 1e-3  # s_y^2 = 2.5e-5: barely moved


# --------------------------------------------------------------------------------------------------------
# Batch invariance and registry


@pytest.mark.parametrize("name", ["dps", "mcg", "ddrm", "reddiff"])
def test_batch_invariance(name, request):
    """Measurement 0 alone gives the same sample as at index 0 of the fixture's batch (same key and settings);
    other members of the batch differ (they use fold_in(key, i))."""
    runs = {
        "dps": (lambda r: r[0.1], dict(zeta=0.1, num_steps=200, clip=False), Inpaint(MASK, 0.05), "prior"),
        "mcg": (lambda r: r[0.03], dict(alpha_step=0.03, num_steps=200, clip=False, y_noise_time="output"),
                Inpaint(MASK, 0.0), "prior"),
        "ddrm": (lambda r: r[1][0.85], dict(eta=0.85), Inpaint(MASK, 0.1), "unit_prior"),
        "reddiff": (lambda r: r, dict(num_steps=50), Inpaint(MASK, 0.05), "prior"),
    }
    pick, settings, op, prior_name = runs[name]
    batch = np.asarray(pick(request.getfixturevalue(f"{name}_run" if name == "reddiff" else f"{name}_runs"))[0])
    y = MASK.ravel() * (np.array([1.0, -0.95, 0.0, 0.0]) if name == "ddrm" else X_TRUE)
    alone, _ = get_baseline(name).solve(
        request.getfixturevalue(prior_name), broadcast_operator(op, 1), jnp.asarray(y, jnp.float32).reshape((1,) + SHAPE),
        KEY, **settings,
    )
    np.testing.assert_allclose(alone[0], batch[0], atol=1e-5)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3




def test_registry():
    """Each name gives its module, whose solve takes (prior, operator, y, key, **settings); the numbers of each
    solve are checked above through get_baseline."""
    assert set(BASELINES) == {"dps", "mcg", "pigdm", "cpigdm", "ddrm", "reddiff", "noise2score", "flow"}
    for name in BASELINES:
        module = get_baseline(name)
        assert module.__name__ == f"apd.baselines.{name}"
        assert list(inspect.signature(module.solve).parameters)[:4] == ["prior", "operator", "y", "key"], name
    assert requirements("ddrm") == ("linear", "svd") and requirements("dps") == ()
    with pytest.raises(ValueError, match="unknown baseline 'ddpm'; known: cpigdm, ddrm, dps"):
        get_baseline("ddpm")
    with pytest.raises(ValueError, match="unknown baseline"):
        requirements("nope")


def test_require_messages():
    op = Inpaint(MASK, 0.1)
    for feature in ("linear", "pinv", "svd"):
        assert common.has_feature(op, feature)
    assert not common.has_feature(op, "denoise") and common.has_feature(Denoise(0.1, SHAPE), "denoise")
    with pytest.raises(ValueError, match="MCG needs a linear operator; _Square is not linear"):
        common.require(_Square(), "linear", "MCG")
    with pytest.raises(ValueError, match="unknown operator feature"):
        common.has_feature(op, "fft")
