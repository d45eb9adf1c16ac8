"""Score networks: shapes, zero output at init, time dependence, parameter counts, longitude wrap, make_score_net,
and the loop-friendly convolution they are built on."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from apd.nets import GridUNet, ResidualMLP, UNet, VertexUNet, make_score_net
from apd.nets.conv import Conv
from apd.nets.unet import ResBlock, UNetBackbone, group_count

T = jnp.array([0.1, 0.9])
SMALL_UNET = UNet(8, (1, 2), 1, attn_resolutions=(4,))
SMALL_VERTEX = VertexUNet(8, (1, 2, 2), 1, attn_levels=(2,))
SMALL_GRID = GridUNet(4, (1, 2, 2), 1)  # ERA5's 46x90 grid


def _init(module, shape):
    # The rbg key compiles much faster on CPU than threefry for a module with many initialisers.
    x = jnp.ones(shape)
    return jax.jit(module.init)(jax.random.key(0, impl="rbg"), x, jnp.full((shape[0],), 0.5))["params"]


def _num_params(module, shape, *extra):
    args = (jnp.ones(shape),) + extra if extra else (jnp.ones(shape), jnp.full((shape[0],), 0.5))
    params = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _random_params(module, x):
    """Standard normal parameters for module(x, t) (no zero-initialised output)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, jnp.ones(x.shape[:1]))["params"]
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)


def _with_ones_output_kernel(params):
    """params with the zero-initialised output conv kernel set to ones."""
    backbone = dict(params["UNetBackbone_0"])
    backbone["conv_out"] = {**backbone["conv_out"], "kernel": jnp.ones_like(backbone["conv_out"]["kernel"])}
    return {"UNetBackbone_0": backbone}


@pytest.mark.parametrize(
    "module, shape",
    [
        (SMALL_UNET, (1, 8, 8, 1)),
        (UNet(4, (1, 2, 2), 1, attn_resolutions=(7,)), (1, 28, 28, 1)),  # 3 levels: no padding
        (UNet(4, (1, 2, 2, 2), 1, attn_resolutions=(8,)), (1, 28, 28, 1)),  # 4 levels: reflect-padded to 32
        (UNet(4, (1, 2, 2), 1), (1, 6, 10, 3)),  # padded to 8x12
        (SMALL_VERTEX, (1, 37, 1)),  # zero-padded to 40
        (VertexUNet(4, (1, 2, 2), 1), (1, 1889, 1)),  # zero-padded to 1892
        (SMALL_GRID, (1, 4140, 1)),  # 46x90, padded to 48x92
    ],
)
def test_output_shape_equals_input_shape(module, shape):
    x, t = jnp.ones(shape), jnp.ones(shape[:1])
    out = jax.eval_shape(lambda x, t: module.init_with_output(jax.random.key(0), x, t)[0], x, t)
    assert out.shape == shape


@pytest.mark.parametrize(
    "module, shape",
    [(SMALL_UNET, (2, 8, 8, 1)), (SMALL_VERTEX, (2, 37, 1)), (GridUNet(4, (1, 2), 1, grid_shape=(5, 7)), (2, 35, 1))],
)
def test_zero_output_at_init_and_time_dependence(module, shape):
    params = _init(module, shape)
    x = jnp.broadcast_to(jax.random.uniform(jax.random.key(1), shape[1:]), shape)  # same x, two times
    apply = jax.jit(module.apply)
    out = apply({"params": params}, x, T)
    assert out.shape == shape
    np.testing.assert_array_equal(out, 0.0)
    out = apply({"params": _with_ones_output_kernel(params)}, x, T)
    assert np.all(np.isfinite(out))
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3


def test_parameter_counts_are_pinned():
    assert _num_params(UNet(8, (1, 2), 1, attn_resolutions=(4,)), (1, 8, 8, 1)) == 44_969
    assert _num_params(UNet(32, (1, 2, 2), 1, attn_resolutions=(8,)), (1, 32, 32, 3)) == 1_113_955
    assert _num_params(VertexUNet(8, (1, 2, 2), 1, attn_levels=(2,)), (1, 37, 1)) == 33_305


@pytest.mark.parametrize("nd", [1, 2])
def test_resblock_parameter_count_closed_form(nd):
    cin, cout, emb = 8, 16, 32
    k = 3**nd
    expected = (
        2 * cin + (k * cin * cout + cout)  # GroupNorm, conv 1
        + (emb * cout + cout)  # time projection
        + 2 * cout + (k * cout * cout + cout)  # GroupNorm, conv 2
        + (cin * cout + cout)  # 1x1 skip conv
    )
    count = _num_params(ResBlock(cout), (1,) + (4,) * nd + (cin,), jnp.ones((1, emb)))
    assert count == expected


def test_group_count():
    assert [group_count(c, 32) for c in (1, 4, 8, 40, 48, 128, 192)] == [1, 1, 2, 10, 12, 32, 32]
    assert group_count(128, 8) == 8


def test_dropout_only_in_training():
    shape = (2, 8, 1)
    base, dropped = VertexUNet(4, (1,), 1), VertexUNet(4, (1,), 1, dropout=0.5)
    x = jax.random.uniform(jax.random.key(1), shape)
    params = _random_params(base, x)
    out = base.apply({"params": params}, x, T)
    np.testing.assert_array_equal(dropped.apply({"params": params}, x, T), out)
    out_train = dropped.apply({"params": params}, x, T, train=True, rngs={"dropout": jax.random.key(2)})
    assert float(jnp.max(jnp.abs(out_train - out))) > 1e-3


def test_circular_backbone_is_exactly_periodic_in_longitude():
    """With width divisible by 2**(levels-1), rolling the input by a multiple of that rolls the output alike."""
    x = jax.random.normal(jax.random.key(1), (1, 8, 16, 1))
    t = jnp.full((1,), 0.3)
    for circular_axes, periodic in (((1,), True), ((), False)):
        net = UNetBackbone(4, (1, 2, 2), 1, mid_attn=False, circular_axes=circular_axes)
        params = _random_params(net, x)
        out, rolled = (net.apply({"params": params}, v, t) for v in (x, jnp.roll(x, 4, axis=2)))
        error = float(jnp.max(jnp.abs(rolled - jnp.roll(out, 4, axis=2))))
        assert (error < 1e-4 * float(jnp.max(jnp.abs(out)))) == periodic, (circular_axes, error)


def test_grid_unet_wraps_around_in_longitude():
    """Output column 0 feels input column 89 across the dateline about as much as column 1 on its other side.

    Not exactly roll-equivariant: the 2 wrapped columns that pad 90 to 92 are a seam on the 92-column ring.
    """
    x = jax.random.uniform(jax.random.key(1), (1, 4140, 1))
    params = _random_params(SMALL_GRID, x)
    column0 = lambda x: jnp.sum(SMALL_GRID.apply({"params": params}, x, T[:1]).reshape(46, 90)[:, 0])
    grad = jnp.abs(jax.grad(column0)(x)).reshape(46, 90).sum(axis=0)
    assert float(grad[89]) > 0.5 * float(grad[1]) > 0.0


def test_bad_inputs_raise():
    t = jnp.ones((1,))
    with pytest.raises(ValueError, match=r"too small for 4 levels"):
        jax.eval_shape(UNet(4, (1, 2, 2, 2), 1).init, jax.random.key(0), jnp.ones((1, 4, 4, 1)), t)
    with pytest.raises(ValueError, match=r"UNet expects images \(B,H,W,C\)"):
        jax.eval_shape(UNet(4, (1, 2), 1).init, jax.random.key(0), jnp.ones((1, 8, 1)), t)
    with pytest.raises(ValueError, match=r"attn_levels \[3\] out of range for 2 levels"):
        jax.eval_shape(VertexUNet(4, (1, 2), 1, attn_levels=(3,)).init, jax.random.key(0), jnp.ones((1, 8, 1)), t)
    with pytest.raises(ValueError, match=r"GridUNet expects vertex signals \(B,4140,C\) of the 46x90 grid, got shape"):
        jax.eval_shape(SMALL_GRID.init, jax.random.key(0), jnp.ones((1, 4000, 1)), t)


def test_make_score_net():
    cfg = ml_collections.ConfigDict(
        {"name": "unet", "base_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8]}
    )
    net = make_score_net(cfg, (32, 32, 3))
    assert net == UNet(32, (1, 2, 2), 1, attn_resolutions=(8,))
    vertex = make_score_net(ml_collections.ConfigDict({"name": "vertex_unet", "base_channels": 16}), (1889, 1))
    assert vertex == VertexUNet(base_channels=16)
    grid = make_score_net(ml_collections.ConfigDict({"name": "grid_unet", "grid_shape": [5, 7]}), (35, 1))
    assert grid == GridUNet(grid_shape=(5, 7))
    mlp = make_score_net(ml_collections.ConfigDict({"name": "mlp", "width": 64, "num_blocks": 2}), (64,))
    assert mlp == ResidualMLP(width=64, num_blocks=2)
    with pytest.raises(ValueError, match=r"unknown score network 'resnet'; known: mlp, unet, vertex_unet, grid_unet"):
        make_score_net(ml_collections.ConfigDict({"name": "resnet"}), (8, 8, 1))
    with pytest.raises(ValueError, match=r"unet needs a signal of rank 3, got shape \(1889, 1\)"):
        make_score_net(cfg, (1889, 1))


@pytest.mark.parametrize("shape,kernel,stride", [((2, 8, 6, 3), 3, 1), ((2, 8, 6, 3), 3, 2), ((2, 8, 6, 3), 1, 1),
                                                 ((2, 10, 4), 3, 1), ((2, 10, 4), 3, 2)])
def test_conv_equals_flax_conv_in_value_gradients_and_initialisation(shape, kernel, stride):
    """Conv (its input gradient written as a forward convolution) against nn.Conv with the same 'SAME' padding:
    identical initial parameters, outputs and gradients in x, kernel and bias, in 1-D and 2-D, stride 1 and 2."""
    nd = len(shape) - 2
    key = jax.random.key(3)
    x = jax.random.normal(key, shape)
    pads = tuple(jax.lax.padtype_to_pads(shape[1:-1], (kernel,) * nd, (stride,) * nd, "SAME"))
    flax_conv = nn.Conv(5, (kernel,) * nd, strides=(stride,) * nd, padding=pads)
    ours = Conv(5, (kernel,) * nd, (stride,) * nd, pads)
    params = flax_conv.init(key, x)
    jax.tree.map(np.testing.assert_array_equal, params, ours.init(key, x))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(key, p.shape), params)

    def loss(module):
        return lambda p, x_: jnp.sum(jnp.sin(module.apply(p, x_)))

    np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), atol=1e-6)
    expected, got = (jax.grad(loss(m), argnums=(0, 1))(params, x) for m in (flax_conv, ours))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), expected, got)
