"""Conditional conv flow: squeeze, condition resizing, inversion, exact log-det, identity at init, batch
independence, super-resolution conditions, and the log-density functions of apd.flows."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from apd.flows import log_prob, make_flow, sample_and_log_prob
from apd.flows.conv import ConditionalConvFlow, resize_condition, squeeze, unsqueeze


SHAPE, COND = (8, 8, 1), (8, 8, 2)


def _flow(shape):
    return ConditionalConvFlow(shape, num_levels=2, couplings_per_level=2, channels=16)


def _random_params(flow, z, cond, seed=0):
    """Params of flow's structure with every entry random (kernels ~ N(0, 1/fan_in), the rest ~ N(0, 0.05^2)),
    so the flow is far from the identity; built with numpy, which skips compiling flow.init."""
    shapes = jax.eval_shape(flow.init, jax.random.key(0), z, cond)["params"]
    rng = np.random.RandomState(seed)
    scale = lambda s: 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) == 4 else 0.05
    return jax.tree.map(lambda s: jnp.asarray(scale(s) * rng.randn(*s.shape), jnp.float32), shapes)


def _apply(flow):
    """Jitted (params, v, cond) -> forward and inverse of flow."""
    fwd = jax.jit(lambda p, z, c: flow.apply({"params": p}, z, c))
    inv = jax.jit(lambda p, x, c: flow.apply({"params": p}, x, c, method="inverse"))
    return fwd, inv


@pytest.fixture(scope="module")
def setup():
    """8x8x1 flow, random params, its jitted directions, and a batch of 4 z and conditions."""
    flow = _flow(SHAPE)
    z = jax.random.normal(jax.random.key(1), (4,) + SHAPE)
    cond = jax.random.normal(jax.random.key(2), (4,) + COND)
    return flow, _random_params(flow, z, cond), *_apply(flow), z, cond


def test_squeeze_layout_and_roundtrip():
    v = jnp.arange(32.0).reshape(1, 4, 4, 2)
    s = squeeze(v)
    assert s.shape == (1, 2, 2, 8)
    # block (0, 0): pixels (0,0), (0,1), (1,0), (1,1), each with its 2 channels
    np.testing.assert_array_equal(s[0, 0, 0], [0, 1, 2, 3, 8, 9, 10, 11])
    np.testing.assert_array_equal(unsqueeze(s), v)


def test_resize_condition_pools_and_repeats():
    c = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(resize_condition(c, (2, 2))[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    up = resize_condition(jnp.array([[[[1.0], [2.0]], [[3.0], [4.0]]]]), (4, 4))[0, :, :, 0]
    np.testing.assert_array_equal(up, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    with pytest.raises(ValueError, match="integer factor"):
        resize_condition(jnp.zeros((1, 3, 3, 1)), (4, 4))


def test_identity_at_init(setup):
    flow, _, fwd, _, z, cond = setup
    params = jax.jit(flow.init)(jax.random.key(3, impl="rbg"), z, cond)["params"]  # rbg: quicker to compile
    x, logdet = fwd(params, z, cond)
    np.testing.assert_array_equal(x, z)
    np.testing.assert_array_equal(logdet, np.zeros(4))


def test_inverse_roundtrip(setup):
    _, params, fwd, inv, z, cond = setup
    x, logdet = fwd(params, z, cond)
    assert float(jnp.max(jnp.abs(x - z))) > 0.1  # the random flow is not the identity
    z_back, inv_logdet = inv(params, x, cond)
    np.testing.assert_allclose(z_back, z, atol=1e-5)
    np.testing.assert_allclose(inv_logdet, -logdet, rtol=1e-5, atol=1e-4)


def test_inverse_roundtrip_three_channels():
    flow = _flow((8, 8, 3))
    z = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    cond = jax.random.normal(jax.random.key(2), (2, 8, 8, 4))
    params = _random_params(flow, z, cond)
    fwd, inv = _apply(flow)
    x, logdet = fwd(params, z, cond)
    z_back, inv_logdet = inv(params, x, cond)
    np.testing.assert_allclose(z_back, z, atol=1e-5)
    np.testing.assert_allclose(inv_logdet, -logdet, rtol=1e-5, atol=1e-4)


def test_logdet_equals_jacobian_slogdet(setup):
    flow, params, _, _, z, cond = setup

    def forward(flat):
        x, logdet = flow.apply({"params": params}, flat.reshape((1,) + SHAPE), cond[:1])
        return x.reshape(-1), logdet[0]

    @jax.jit
    def jacobian_and_logdet(flat):
        return jax.jacfwd(lambda v: forward(v)[0])(flat), forward(flat)[1]

    jac, logdet = jacobian_and_logdet(z[0].reshape(-1))
    assert jac.shape == (64, 64)
    sign, expected = jnp.linalg.slogdet(jac)
    assert float(sign) == 1.0
    assert float(jnp.max(jnp.abs(jac - jnp.eye(64)))) > 0.1 and abs(float(expected)) > 0.1  # far from identity
    np.testing.assert_allclose(logdet, expected, atol=1e-4)


def test_batch_independence(setup):
    _, params, fwd, _, z, cond = setup
    x, logdet = fwd(params, z, cond)
    x0, logdet0 = fwd(params, z[:1], cond[:1])
    np.testing.assert_allclose(x0[0], x[0], atol=1e-6)
    np.testing.assert_allclose(logdet0[0], logdet[0], rtol=1e-6, atol=1e-5)


def test_super_resolution_conditions(setup):
    _, _, fwd, inv, z, _ = setup
    flow = _flow(SHAPE)
    for factor in (2, 4):
        cond = jax.random.normal(jax.random.key(factor), (4, 8 // factor, 8 // factor, 1))
        params = _random_params(flow, z, cond)
        x, logdet = fwd(params, z, cond)
        assert x.shape == (4, 8, 8, 1) and logdet.shape == (4,)
        x_other, _ = fwd(params, z, cond + 1.0)
        assert float(jnp.max(jnp.abs(x_other - x))) > 1e-2  # the condition is used
    np.testing.assert_allclose(inv(params, x, cond)[0], z, atol=1e-5)


def test_bad_shapes_raise():
    flow = _flow(SHAPE)
    z = jnp.zeros((2,) + SHAPE)
    with pytest.raises(ValueError, match=r"condition spatial size \(3, 3\)"):
        jax.eval_shape(flow.init, jax.random.key(0), z, jnp.zeros((2, 3, 3, 1)))
    with pytest.raises(ValueError, match="condition batch 3 != signal batch 2"):
        jax.eval_shape(flow.init, jax.random.key(0), z, jnp.zeros((3, 8, 8, 1)))
    deep = ConditionalConvFlow((28, 28, 1), num_levels=3, couplings_per_level=1, channels=8)
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*num_levels = 8"):
        jax.eval_shape(deep.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 28, 28, 1)))


def test_mnist_shape_with_two_levels():
    flow = ConditionalConvFlow((28, 28, 1), num_levels=2, couplings_per_level=1, channels=8)
    z, cond = jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 14, 14, 1))
    params = jax.eval_shape(flow.init, jax.random.key(0), z, cond)["params"]
    x, logdet = jax.eval_shape(lambda p: flow.apply({"params": p}, z, cond), params)
    assert x.shape == (1, 28, 28, 1) and logdet.shape == (1,)


def test_make_flow_and_density_functions_agree(setup):
    _, params, _, _, _, cond = setup
    cfg = ml_collections.ConfigDict(
        dict(name="conv", num_levels=2, couplings_per_level=2, channels=16, scale_bound=2.0)
    )
    flow = make_flow(cfg, SHAPE)
    assert isinstance(flow, ConditionalConvFlow) and flow.signal_shape == SHAPE
    x, lq = jax.jit(lambda p, k, c: sample_and_log_prob(flow, p, k, c))(params, jax.random.key(5), cond)
    assert x.shape == (4,) + SHAPE and lq.shape == (4,)
    np.testing.assert_allclose(jax.jit(lambda p, x, c: log_prob(flow, p, x, c))(params, x, cond), lq, rtol=1e-5)
