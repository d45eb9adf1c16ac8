"""Conditional RealNVP: exact inverse, exact log-determinant, identity at init, batch independence, the estimate
skip and the least-squares fit of the output map."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from apd import flows
from apd.flows import ConditionalRealNVP

SHAPE = (7, 1)  # odd dimension on purpose
FLOW = ConditionalRealNVP(SHAPE, num_couplings=4, width=32, depth=2, scale_bound=2.0)
COND = jax.random.uniform(jax.random.PRNGKey(5), (3, 7, 2))


def _perturbed(p, seed: int, scale: float):
    """p with every leaf moved by scale * N(0, 1), so that checks go through non-trivial layers."""
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def params():
    return _perturbed(FLOW.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), COND[:1])["params"], 1, 0.2)


def test_identity_at_initialisation():
    p = FLOW.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), COND[:1])["params"]
    z = jax.random.normal(jax.random.PRNGKey(2), (3,) + SHAPE)
    x, logdet = FLOW.apply({"params": p}, z, COND)
    # permutations only reorder entries
    np.testing.assert_allclose(np.sort(np.asarray(x).ravel()), np.sort(np.asarray(z).ravel()), atol=1e-6)
    np.testing.assert_allclose(logdet, 0.0, atol=1e-6)


def test_inverse_and_log_det_are_exact(params):
    z = jax.random.normal(jax.random.PRNGKey(3), (3,) + SHAPE)
    x, logdet = FLOW.apply({"params": params}, z, COND)
    z_back, inv_logdet = FLOW.apply({"params": params}, x, COND, method="inverse")
    np.testing.assert_allclose(z_back, z, atol=1e-5)
    np.testing.assert_allclose(inv_logdet, -logdet, atol=1e-5)
    for b in range(3):
        jac = jax.jacfwd(lambda v: FLOW.apply({"params": params}, v.reshape((1,) + SHAPE), COND[b : b + 1])[0].ravel())(
            z[b].ravel()
        )
        assert float(jnp.linalg.slogdet(jac)[1]) == pytest.approx(float(logdet[b]), abs=1e-4)
    assert abs(float(logdet[0])) > 0.05  # the perturbed flow is not volume preserving


def test_log_prob_agrees_with_sampling_and_batch_independence(params):
    x, log_q = flows.sample_and_log_prob(FLOW, params, jax.random.PRNGKey(4), COND)
    np.testing.assert_allclose(flows.log_prob(FLOW, params, x, COND), log_q, atol=1e-4)
    z = jax.random.normal(jax.random.PRNGKey(6), (3,) + SHAPE)
    together = FLOW.apply({"params": params}, z, COND)[0]
    alone = FLOW.apply({"params": params}, z[1:2], COND[1:2])[0]
    np.testing.assert_allclose(alone[0], together[1], rtol=1e-5, atol=1e-5)  # float rounding only


def test_condition_changes_samples(params):
    z = jnp.zeros((2,) + SHAPE)
    x = FLOW.apply({"params": params}, z, jnp.stack([COND[0], COND[0] + 1.0]))[0]
    assert float(jnp.max(jnp.abs(x[0] - x[1]))) > 1e-3


def test_errors():
    with pytest.raises(ValueError, match="unknown flow 'glow'"):
        flows.make_flow(ConfigDict(dict(name="glow")), SHAPE)
    with pytest.raises(ValueError, match=r"expected a \(batch, \*\(7, 1\)\) array"):
        FLOW.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 1)), COND[:1])


def test_estimate_is_added_at_the_output_through_a_per_entry_gain():
    p = FLOW.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), COND[:1])["params"]
    p = dict(p, out_shift=jnp.full(7, 0.5), out_log_scale=jnp.full(7, np.log(0.1)), estimate_gain=jnp.full(7, 0.8))
    est = jax.random.uniform(jax.random.PRNGKey(8), (3,) + SHAPE)
    cond = flows.FlowCondition(COND, est)
    z = jnp.zeros((3,) + SHAPE)
    x, logdet = FLOW.apply({"params": p}, z, cond)  # untrained couplings: x = 0.1 z + 0.5 + 0.8 x0
    np.testing.assert_allclose(x, 0.5 + 0.8 * est, atol=1e-6)
    np.testing.assert_allclose(logdet, 7 * np.log(0.1), atol=1e-4)
    x, log_q = flows.sample_and_log_prob(FLOW, _perturbed(p, 10, 0.1), jax.random.PRNGKey(9), cond)
    np.testing.assert_allclose(flows.log_prob(FLOW, _perturbed(p, 10, 0.1), x, cond), log_q, atol=1e-4)
    with pytest.raises(ValueError, match=r"estimate shape \(3, 6, 1\) != signal batch shape \(3, 7, 1\)"):
        FLOW.apply({"params": p}, z, flows.FlowCondition(COND, est[:, :6]))


def test_fit_output_is_the_per_entry_least_squares_fit():
    p = FLOW.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), COND[:1])["params"]
    kx, kn = jax.random.split(jax.random.PRNGKey(11))
    x = 0.3 + 0.2 * jax.random.normal(kx, (20_000,) + SHAPE)
    est = x + 0.2 * jax.random.normal(kn, x.shape)  # noisy estimate: Wiener gain 0.04 / (0.04 + 0.04) = 0.5
    est = est.at[:, 0].set(0.0)  # an entry the estimate leaves empty: gain 1, shift = mean, std = prior std
    est = est.at[:, 1].set(x[:, 1])  # an exact estimate: gain 1, shift 0, std at the floor
    fitted = flows.fit_output(p, x, est, min_std=1e-2)
    gain, shift, std = fitted["estimate_gain"], fitted["out_shift"], np.exp(fitted["out_log_scale"])
    np.testing.assert_allclose(gain[2:], 0.5, atol=0.02)
    np.testing.assert_allclose(shift[2:], 0.15, atol=0.01)  # b = mean(x) - g mean(x0) = 0.3 - 0.5 * 0.3
    np.testing.assert_allclose(std[2:], np.sqrt(0.02), rtol=0.02)  # posterior std of x given x0
    np.testing.assert_allclose([gain[0], shift[0], std[0]], [1.0, 0.3, 0.2], atol=0.01)
    np.testing.assert_allclose([gain[1], shift[1], std[1]], [1.0, 0.0, 0.01], atol=1e-4)
