"""The inference API: shapes, one compiled call per shape, clear errors, per-measurement operators."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from apd import flows
from apd.flows import ConditionalRealNVP
from apd.measurements import measure, split_key
from apd.objective import repeat_batch
from apd.operators import make_operator_family
from apd.sampler import Sampler

SHAPE = (6, 1)


def make_sampler(operator_cfg):
    family = make_operator_family(ConfigDict(operator_cfg), SHAPE)
    flow = ConditionalRealNVP(SHAPE, num_couplings=2, width=16)
    op = family.draw(jax.random.PRNGKey(0))
    cond = op.condition(jnp.zeros(SHAPE))[None]
    params = flow.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), cond)["params"]
    params = dict(params, out_shift=jnp.arange(6.0), out_log_scale=jnp.full((6,), np.log(0.5)))
    return Sampler(flow, params, family, ConfigDict())


DENOISE = make_sampler(dict(name="denoise", noise_std=0.1))


def test_shapes_for_one_and_many_measurements():
    one = DENOISE.sample(jnp.zeros(SHAPE), num_samples=128, key=jax.random.PRNGKey(1))
    assert one.shape == (128, 6, 1)
    many = DENOISE.sample(jnp.zeros((3,) + SHAPE), num_samples=5, key=jax.random.PRNGKey(1))
    assert many.shape == (3, 5, 6, 1)
    # The flow here is x = 0.5 z + (0..5): check the numbers, not only the shapes.
    mean, std = DENOISE.posterior_mean_and_std(jnp.zeros(SHAPE), num_samples=20_000, key=jax.random.PRNGKey(2))
    np.testing.assert_allclose(mean[:, 0], np.arange(6.0), atol=0.02)
    np.testing.assert_allclose(std[:, 0], 0.5, atol=0.01)


def test_compiled_once_per_shape():
    before = DENOISE._draw._cache_size()
    for i in range(3):
        DENOISE.sample(jnp.full((2,) + SHAPE, float(i)), num_samples=4, key=jax.random.PRNGKey(i))
    assert DENOISE._draw._cache_size() - before <= 1


def test_bad_measurements_are_refused():
    with pytest.raises(ValueError, match=r"y must have shape \(6, 1\) or \(N, \*\(6, 1\)\), got \(5, 1\)"):
        DENOISE.sample(jnp.zeros((5, 1)))
    with pytest.raises(ValueError, match="NaN"):
        DENOISE.sample(jnp.full(SHAPE, jnp.nan))
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        DENOISE.sample(jnp.zeros(SHAPE), num_samples=0)


def test_per_measurement_masks_need_the_operator():
    sampler = make_sampler(dict(name="inpaint", noise_std=0.1, hidden_fraction=0.5, per_measurement=True))
    with pytest.raises(ValueError, match="pass operator="):
        sampler.sample(jnp.zeros(SHAPE))
    ops = sampler.family.draw_batch(jax.random.PRNGKey(3), 2)
    x = sampler.sample(jnp.zeros((2,) + SHAPE), num_samples=3, operator=ops)
    assert x.shape == (2, 3, 6, 1)
    single = sampler.sample(jnp.zeros(SHAPE), num_samples=3, operator=sampler.family.draw(jax.random.PRNGKey(4)))
    assert single.shape == (3, 6, 1)


BLIND = dict(name="inpaint_blind", noise_std=0.1, hidden_min=0.3, hidden_max=0.6)


def _blind_measurements(sampler, n=8):
    """The true per-measurement operators (leading axis n) and y (n,*S), made as training makes them."""
    x = 0.5 + jax.random.uniform(jax.random.PRNGKey(5), (n,) + SHAPE)
    return measure(sampler.family, split_key(0, "test"), x, jnp.arange(n))


def test_blind_condition_is_the_true_operators():
    """Blind mode: the sampler, told no mask, builds the condition training built with the true mask."""
    sampler = make_sampler(BLIND)
    ops, y = _blind_measurements(sampler)
    masks = np.asarray(ops.mask)
    assert len({m.tobytes() for m in masks}) >= 6  # several measurements, several masks
    reference = np.asarray(sampler.family.draw(jax.random.PRNGKey(0)).mask)
    assert np.abs(np.asarray(y) * (1 - reference)).max() > 0.5  # y is observed where the reference mask hides
    true = jax.vmap(flows.condition_of)(ops, y)
    got = sampler.condition(y)
    np.testing.assert_array_equal(got.features, true.features)
    np.testing.assert_array_equal(got.estimate, true.estimate)
    np.testing.assert_array_equal(got.estimate, y)  # zero-filled y: the estimate of training's true operator


def test_blind_samples_ignore_the_reference_mask():
    """Samples for blind measurements equal the flow's samples under the true operators' conditions (same key)."""
    sampler = make_sampler(BLIND)
    ops, y = _blind_measurements(sampler)
    key = jax.random.PRNGKey(6)
    x = sampler.sample(y, num_samples=4, key=key)
    cond = repeat_batch(jax.vmap(flows.condition_of)(ops, y), 4)
    expected = flows.sample(sampler.flow, sampler.params, key, cond).reshape((8, 4) + SHAPE)
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_keys_and_suspicious_requests():
    with pytest.raises(ValueError, match=r"key must be a JAX random key, e.g. jax.random.PRNGKey\(0\), got 0"):
        DENOISE.sample(jnp.zeros(SHAPE), num_samples=2, key=0)
    low, high = DENOISE.y_range  # denoising at s = 0.1: [0, 1] widened by 0.5 + 6 s
    assert (low, high) == pytest.approx((-1.1, 2.1))
    with pytest.warns(UserWarning, match=r"y spans \[0, 255\], far outside \[-1.1, 2.1\]"):
        DENOISE.sample(jnp.linspace(0, 255, 6).reshape(SHAPE), num_samples=2)
    with pytest.warns(UserWarning, match="the posterior std of one sample is 0"):
        DENOISE.posterior_mean_and_std(jnp.zeros(SHAPE), num_samples=1)


def test_tweedie_estimate_is_the_priors_exact_posterior_mean():
    """flow.model.estimate='tweedie': the condition's estimate is E[x|y] = m + C (C + s^2 I)^-1 (y - m) under a
    Gaussian prior N(m, C) with its exact score; the sampler refuses to run without the prior."""
    from apd.config_check import config_problems
    from apd.objective import conditions
    from apd.priors import GaussianPrior

    rng = np.random.default_rng(0)
    root = rng.normal(size=(6, 6)) * 0.3
    mean, cov = rng.normal(size=6) * 0.2, root @ root.T + 0.05 * np.eye(6)
    prior = GaussianPrior.create(mean, cov, SHAPE)
    s = 0.1
    config = ConfigDict(dict(flow=dict(model=dict(estimate="tweedie")), operator=dict(name="denoise", noise_std=s)))
    base = make_sampler(dict(name="denoise", noise_std=s))
    sampler = Sampler(base.flow, base.params, base.family, config, prior=prior)
    y = rng.normal(size=(3, 6)) * 0.5
    exact = mean + (cov @ np.linalg.solve(cov + s**2 * np.eye(6), (y - mean).T)).T
    cond = sampler.condition(jnp.asarray(y, jnp.float32).reshape((3,) + SHAPE))
    np.testing.assert_allclose(np.asarray(cond.estimate).reshape(3, 6), exact, atol=1e-4)
    np.testing.assert_allclose(np.asarray(cond.features).reshape(3, 6), y, atol=1e-6)  # the flow still sees y
    with pytest.raises(ValueError, match="this flow's estimate is the prior's \\('tweedie'\\): pass prior="):
        Sampler(base.flow, base.params, base.family, config)
    inpaint = make_operator_family(ConfigDict(dict(name="inpaint", hidden_fraction=0.5, mask_seed=0, noise_std=s)), SHAPE).draw_batch(
        jax.random.PRNGKey(0), 1)
    with pytest.raises(ValueError, match="'tweedie' needs a denoising operator and the prior"):
        conditions(inpaint, jnp.zeros((1,) + SHAPE), prior, "tweedie")
    config.operator.name = "inpaint"
    assert config_problems(config, ("flow",))[-1] == (
        "flow.model.estimate='tweedie' is the prior's denoiser: it needs operator 'denoise', not 'inpaint'")
    config.flow.model.estimate = "lmmse"
    assert config_problems(config, ("flow",))[-1] == (
        "flow.model.estimate must be one of ('pinv', 'tweedie', 'wiener'), got 'lmmse'")


def test_wiener_estimate_is_the_exact_posterior_mean_of_its_gaussian_fit(tmp_path):
    """flow.model.estimate='wiener' (deblurring): fitted to samples of a Gaussian prior N(m, C), the condition's
    estimate is E[x|y] = m + K A^T (A K A^T + s^2 I)^-1 (y - A m) for K = (1 - rho) C + rho V diag(V^T C V) V^T up to
    sampling error, with the least shrinkage of the grid where C is far from diagonal in the blur's SVD basis and
    samples are plenty; the sampler refuses to run without the fit."""
    from apd.config_check import config_problems
    from apd.objective import conditions, fit_wiener
    from apd.priors import GaussianPrior
    from apd.training.flow import FIT_PAIRS, WIENER_FILE, load_estimate, task_estimate

    image = (4, 4, 1)
    s = 0.05
    operator = dict(name="deblur", noise_std=s, kernel_size=3, width=1.0, threshold=0.0)
    family = make_operator_family(ConfigDict(operator), image)
    op = family.draw(jax.random.PRNGKey(0))
    blur = np.asarray(jax.vmap(op.apply)(jnp.eye(16).reshape((16,) + image))).reshape(16, 16).T
    rng = np.random.default_rng(1)
    root = rng.normal(size=(16, 16)) * 0.1
    mean, cov = rng.uniform(0.2, 0.8, 16), root @ root.T + 0.002 * np.eye(16)
    x = rng.multivariate_normal(mean, cov, size=8192).astype(np.float32).reshape((8192,) + image)
    estimate, rho = fit_wiener(op, jnp.asarray(x))
    assert rho == 0.1  # the smallest shrinkage of the grid: 8,192 samples pin a 16 x 16 covariance down
    y = rng.normal(size=(3, 16)).astype(np.float32) * 0.3 + blur @ mean
    basis = np.asarray(jax.vmap(op.v)(jnp.eye(16).reshape((16,) + image))).reshape(16, 16).T  # column i: V e_i
    shrunk = 0.9 * cov + 0.1 * basis @ np.diag(np.diag(basis.T @ cov @ basis)) @ basis.T
    exact = mean + (shrunk @ blur.T @ np.linalg.solve(blur @ shrunk @ blur.T + s**2 * np.eye(16), (y - blur @ mean).T)).T
    cond = conditions(family.draw_batch(jax.random.PRNGKey(0), 3), jnp.asarray(y).reshape((3,) + image),
                      estimate=estimate)
    np.testing.assert_allclose(np.asarray(cond.estimate).reshape(3, 16), exact, atol=0.03)

    # A run's fit: FIT_PAIRS samples of the prior, kept in the cache; a loaded flow without its file is refused.
    config = ConfigDict(dict(seed=0, flow=dict(model=dict(estimate="wiener")), operator=operator))
    fitted, record = task_estimate(config, family, GaussianPrior.create(mean, cov, image), cache_dir=str(tmp_path))
    assert fitted.gain.shape == (16, 16) and record["rho"] in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    np.testing.assert_allclose(np.asarray(fitted.mean).ravel(), mean, atol=4 * np.sqrt(cov.diagonal().max() / FIT_PAIRS))
    base = make_sampler(dict(name="denoise", noise_std=s))
    with pytest.raises(ValueError, match="'wiener' estimate needs its Gaussian fit of the prior: pass estimate="):
        Sampler(base.flow, base.params, base.family, ConfigDict(dict(flow=dict(model=dict(estimate="wiener")))))
    with pytest.raises(FileNotFoundError, match=f"{WIENER_FILE} is missing"):
        load_estimate(str(tmp_path), config)
    config.operator = ConfigDict(dict(name="saturate", noise_std=s))
    assert config_problems(config, ("flow",))[-1] == (
        "flow.model.estimate='wiener' needs one fixed linear operator (denoise, sr, deblur, inpaint, impute, "
        "inpaint_box, without per_measurement), not 'saturate'")
