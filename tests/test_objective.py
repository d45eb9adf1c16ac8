"""The APD objective: its value at the exact posterior, and a trained flow that recovers a known posterior."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from apd.eval.metrics import coverage
from apd.flows import ConditionalRealNVP, condition_of, normal_log_prob
from apd.objective import apd_loss, apd_terms, data_weight_schedule, forward_kl_loss, kl_plus_evidence
from apd.operators import Denoise, Inpaint, broadcast_operator
from apd.priors import GaussianPrior

D = 4
S = 0.1
RNG = np.random.RandomState(0)
B_ = RNG.randn(D, D) / 2
PRIOR = GaussianPrior.create(0.5 + 0.1 * RNG.randn(D), 0.02 * B_ @ B_.T + 0.01 * np.eye(D), signal_shape=(D, 1))


def _exact_posterior_flow():
    """A diagonal Gaussian prior, denoising one y, and a flow whose output map holds the exact posterior."""
    var = np.array([0.02, 0.05, 0.01, 0.03])
    prior = GaussianPrior.create(np.full(D, 0.5), np.diag(var), signal_shape=(D, 1))
    post_var = 1 / (1 / var + 1 / S**2)
    flow = ConditionalRealNVP((D, 1), num_couplings=2, width=8)
    params = flow.init(jax.random.PRNGKey(0), jnp.zeros((1, D, 1)), jnp.zeros((1, D, 1)))["params"]
    params = dict(
        params,
        estimate_gain=jnp.asarray(post_var / S**2, jnp.float32),
        out_shift=jnp.asarray(post_var * 0.5 / var, jnp.float32),
        out_log_scale=jnp.asarray(0.5 * np.log(post_var), jnp.float32),
    )
    op = broadcast_operator(Denoise(S, (D, 1)), 1)
    y = jnp.asarray([0.6, 0.3, 0.45, 0.8], jnp.float32).reshape(1, D, 1)
    return prior, flow, params, op, y


def test_value_at_the_exact_posterior_is_minus_log_evidence():
    # A diagonal prior and denoising: the exact posterior N(g y + m, post_var) with g = post_var / s^2 is what the
    # flow's output map (estimate y, gain g, shift m) holds exactly with zero couplings, for every y. Then KL = 0
    # and log q - log p(y|x) - ELBO(x) averages to -log p(y).
    prior, flow, params, op, yb = _exact_posterior_flow()
    var, y = np.asarray(jnp.diag(prior.cov)), np.asarray(yb).ravel()
    post_var = 1 / (1 / var + 1 / S**2)
    post_mean = post_var * (0.5 / var + y / S**2)
    assert np.allclose(post_var / S**2 * y + post_var * 0.5 / var, post_mean)
    f = jax.jit(lambda k: kl_plus_evidence(apd_terms(flow, params, prior, op, yb, k, num_z=20_000, elbo_draws=1)))
    values = np.array([float(f(jax.random.PRNGKey(i))[0]) for i in range(4)])
    log_evidence = -0.5 * np.sum((y - 0.5) ** 2 / (var + S**2) + np.log(2 * math.pi * (var + S**2)))
    assert values.mean() == pytest.approx(-log_evidence, abs=4 * values.std() / 2 + 0.02)


def _grad_norm(estimator, params_shift=0.0, num_z=16, key=3):
    prior, flow, params, op, y = _exact_posterior_flow()
    params = dict(params, out_shift=params["out_shift"] + params_shift)

    def loss(p):
        return apd_loss(apd_terms(flow, p, prior, op, y, jax.random.PRNGKey(key), num_z=num_z, **estimator))

    grads = jax.grad(loss)(params)
    return float(optax.tree.norm(grads)), grads


def test_score_and_path_gradient_vanish_at_the_exact_posterior():
    # At q = p(.|y), log q(x) - log p(x|y) is constant in x, so with the exact score (t_s -> 0) and the entropy
    # differentiated through x only, every sample's gradient is zero; the ELBO estimator's is not.
    score_path = dict(prior_gradient="score", score_time=1e-5, path_gradient=True)
    exact_norm, _ = _grad_norm(score_path)
    elbo_norm, _ = _grad_norm(dict())
    assert elbo_norm > 1.0, elbo_norm
    assert exact_norm < 1e-2 * elbo_norm, (exact_norm, elbo_norm)  # measured 0.033 vs 17: the t_s noise


def test_score_gradient_agrees_with_the_elbo_gradient_in_expectation():
    # Away from the optimum (shift off by 0.05), both estimators have the same mean gradient in out_shift
    # (the ELBO's is unbiased for the exact log-density's; the score at t_s = 1e-5 is its gradient up to 1e-4).
    _, score = _grad_norm(dict(prior_gradient="score", score_time=1e-5), params_shift=0.05, num_z=20_000)
    _, elbo_ = _grad_norm(dict(elbo_draws=4), params_shift=0.05, num_z=20_000)
    g_score, g_elbo = np.asarray(score["out_shift"]).ravel(), np.asarray(elbo_["out_shift"]).ravel()
    assert np.linalg.norm(g_score) > 5.0
    np.testing.assert_allclose(g_score, g_elbo, rtol=0.05, atol=0.5)


def test_forward_kl_loss_is_the_posterior_entropy_at_the_exact_posterior():
    # x drawn from the exact posterior of y: -E log q(x|y) with q = p(.|y) is its entropy, sum 0.5 log(2 pi e v).
    prior, flow, params, op, y = _exact_posterior_flow()
    var = np.asarray(jnp.diag(prior.cov))
    post_var = 1 / (1 / var + 1 / S**2)
    post_mean = post_var * (0.5 / var + np.asarray(y).ravel() / S**2)
    n = 20_000
    x = post_mean + np.sqrt(post_var) * np.random.RandomState(0).randn(n, D)
    ops = broadcast_operator(Denoise(S, (D, 1)), n)
    value = float(forward_kl_loss(flow, params, ops, jnp.repeat(y, n, axis=0), jnp.asarray(x, jnp.float32)[..., None]))
    assert value == pytest.approx(0.5 * np.sum(np.log(2 * math.pi * math.e * post_var)), abs=0.03)


def test_unknown_prior_gradient_is_refused():
    with pytest.raises(ValueError, match="prior_gradient must be one of"):
        _grad_norm(dict(prior_gradient="tweedie"))


def test_data_weight_schedule_reaches_one():
    assert float(data_weight_schedule(jnp.asarray(0), 0)) == 1.0
    assert float(data_weight_schedule(jnp.asarray(50), 200)) == pytest.approx(0.25)
    assert float(data_weight_schedule(jnp.asarray(200), 200)) == 1.0
    assert float(data_weight_schedule(jnp.asarray(10_000), 200)) == 1.0


@pytest.fixture(scope="module")
def trained_flow():
    """A small flow trained for a few hundred steps on inpainting (2 of 4 observed) with the exact prior."""
    mask = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(D, 1)
    op = Inpaint(mask, S)
    flow = ConditionalRealNVP((D, 1), num_couplings=4, width=64, depth=2)
    batch = 64
    ops = broadcast_operator(op, batch)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(3e-3, 800, 0.05)))
    params = flow.init(jax.random.PRNGKey(0), jnp.zeros((1, D, 1)), jnp.zeros((1, D, 1)))["params"]
    state = tx.init(params)

    @jax.jit
    def step(params, state, key):
        kx, ky, kl = jax.random.split(key, 3)
        x = PRIOR.sample(kx, batch)
        y = jax.vmap(lambda o, k, xx: o.measure(k, xx))(ops, jax.random.split(ky, batch), x)
        loss, grads = jax.value_and_grad(lambda p: apd_loss(apd_terms(flow, p, PRIOR, ops, y, kl, num_z=2)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    key = jax.random.PRNGKey(1)
    for _ in range(800):
        key, sub = jax.random.split(key)
        params, state = step(params, state, sub)
    return flow, params, op


def test_trained_flow_matches_the_exact_posterior(trained_flow):
    flow, params, op = trained_flow
    x_true = PRIOR.sample(jax.random.PRNGKey(7), 20)
    y = jax.vmap(lambda k, xx: op.measure(k, xx))(jax.random.split(jax.random.PRNGKey(8), 20), x_true)
    n = 4000
    kls, samples = [], []
    for i in range(20):
        z = jax.random.normal(jax.random.PRNGKey(100 + i), (n, D, 1))
        cond = jax.tree.map(lambda a: jnp.repeat(a[None], n, axis=0), condition_of(op, y[i]))
        x, logdet = flow.apply({"params": params}, z, cond)
        post = PRIOR.posterior(np.diag(np.asarray(op.mask[:, 0])), np.asarray(y[i, :, 0]), S)
        kls.append(float(jnp.mean(normal_log_prob(z) - logdet - post.log_prob(x))))
        samples.append(x)
    kl_per_dim = np.mean(kls) / D
    assert kl_per_dim < 0.03, kl_per_dim  # measured 0.009 after 800 steps
    cover = coverage(jnp.stack(samples), x_true, levels=(0.9,))
    assert float(cover[0]) == pytest.approx(0.9, abs=0.06)  # 80 entries: binomial sd 0.034
