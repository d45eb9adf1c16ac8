"""Forward operators: linear algebra identities, SVD forms, likelihoods, masks, families."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from apd.operators import (
    Denoise,
    GaussianBlur,
    Inpaint,
    Matrix,
    Saturate,
    SuperResolution,
    _blur_factors,
    gaussian_taps,
    box_mask,
    broadcast_operator,
    make_operator_family,
    random_mask,
)

IMAGE = (8, 8, 2)
VERTEX = (11, 1)


def _linear_ops():
    """(name, operator) pairs of linear operators with exact (untruncated) pseudo-inverses."""
    return [
        ("denoise", Denoise(0.1, IMAGE)),
        ("inpaint_image", Inpaint(random_mask(jax.random.PRNGKey(0), IMAGE, 0.4), 0.1)),
        ("inpaint_vertex", Inpaint(random_mask(jax.random.PRNGKey(1), VERTEX, 0.6), 0.1)),
        ("inpaint_box", Inpaint(box_mask(IMAGE, 3), 0.1)),
        ("sr2", SuperResolution(2, 0.1, IMAGE)),
        ("sr4", SuperResolution(4, 0.1, IMAGE)),
        ("blur", GaussianBlur(5, 0.7, 0.1, IMAGE, threshold=0.0)),
        ("matrix_wide", Matrix.create(np.random.RandomState(0).randn(3, 8), 0.1, (4, 2))),
        ("matrix_tall", Matrix.create(np.random.RandomState(1).randn(9, 6), 0.1, (6, 1))),
    ]


LINEAR = _linear_ops()
IDS = [name for name, _ in LINEAR]
OPS = [op for _, op in LINEAR]


def _dense(fn, in_shape):
    """Matrix (out, in) of a linear map from shape in_shape, built by vmapping it over basis vectors (float64)."""
    n = math.prod(in_shape)
    basis = jnp.eye(n).reshape((n,) + tuple(in_shape))
    cols = jax.vmap(fn)(basis).reshape(n, -1)
    return np.asarray(cols, np.float64).T


def _rand(key, shape):
    return jax.random.normal(jax.random.PRNGKey(key), shape)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_adjoint_identity(op):
    x, y = _rand(1, op.signal_shape), _rand(2, op.measurement_shape)
    lhs = jnp.vdot(op.apply(x), y)
    rhs = jnp.vdot(x, op.adjoint(y))
    assert abs(float(lhs - rhs)) < 1e-5 * max(1.0, abs(float(lhs)))


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_pseudo_inverse_identities(op):
    x, y = _rand(3, op.signal_shape), _rand(4, op.measurement_shape)
    ax = op.apply(x)
    np.testing.assert_allclose(op.apply(op.pinv(ax)), ax, atol=1e-5)  # A A^+ A = A
    px = op.pinv(op.apply(x))
    np.testing.assert_allclose(op.pinv(op.apply(px)), px, atol=1e-5)  # P P = P
    pinv_y = op.pinv(y)
    np.testing.assert_allclose(op.pinv(op.apply(pinv_y)), pinv_y, atol=1e-4)  # P A^+ = A^+


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_pinv_is_numpy_pinv_of_dense_matrix(op):
    a = _dense(op.apply, op.signal_shape)
    a_pinv = _dense(op.pinv, op.measurement_shape)
    np.testing.assert_allclose(a_pinv, np.linalg.pinv(a), atol=1e-4)
    np.testing.assert_allclose(_dense(op.adjoint, op.measurement_shape), a.T, atol=1e-6)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_svd_reconstructs_operator(op):
    x = _rand(5, op.signal_shape)
    s = op.singular_values()
    assert s.shape == op.signal_shape
    np.testing.assert_allclose(op.u(s * op.v_t(x)), op.apply(x), atol=1e-5)
    np.testing.assert_allclose(op.v(op.v_t(x)), x, atol=1e-5)
    # V is orthogonal: V^T V = I as a dense matrix.
    v = _dense(op.v, op.signal_shape)
    np.testing.assert_allclose(v.T @ v, np.eye(v.shape[0]), atol=1e-5)
    # U^T maps A x onto s * V^T x (zero where s = 0).
    np.testing.assert_allclose(op.u_t(op.apply(x)), s * op.v_t(x), atol=1e-5)
    # Rank = number of nonzero singular values = rank of the dense matrix.
    assert int(jnp.sum(s > 0)) == np.linalg.matrix_rank(_dense(op.apply, op.signal_shape))


def test_superresolution_numbers():
    op = SuperResolution(2, 0.1, (4, 4, 1))
    x = jnp.arange(16.0).reshape(4, 4, 1)
    np.testing.assert_allclose(op.apply(x)[..., 0], [[2.5, 4.5], [10.5, 12.5]])
    y = jnp.array([[1.0, 2.0], [3.0, 4.0]])[..., None]
    np.testing.assert_allclose(op.pinv(y)[:2, :2, 0], [[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(op.adjoint(y)[2:, 2:, 0], [[1.0, 1.0], [1.0, 1.0]])
    s = op.singular_values()[..., 0]
    np.testing.assert_allclose(s, [[0.5, 0, 0.5, 0], [0, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 0]])
    # The coefficient with s = 1/f is the block sum / f (projection on the unit all-ones vector).
    np.testing.assert_allclose(op.v_t(x)[::2, ::2, 0], [[5.0, 9.0], [21.0, 25.0]], atol=1e-5)
    assert op.measurement_shape == (2, 2, 1) and op.num_measured == 4


def test_superresolution_bad_shape():
    with pytest.raises(ValueError, match="factor 3 must be >= 2 and divide H=8 and W=8"):
        SuperResolution(3, 0.1, IMAGE)
    with pytest.raises(ValueError, match=r"needs an \(H, W, C\) image"):
        SuperResolution(2, 0.1, VERTEX)


def test_blur_kernel_numbers():
    k, u, s, v = _blur_factors(6, gaussian_taps(3, 1.0), 0.0)
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / 2)
    taps /= taps.sum()
    np.testing.assert_allclose(k[2, 1:4], taps)
    np.testing.assert_allclose(k[0, :3], [taps[1], taps[2], 0.0])  # zero boundary: no wrap, no renormalising
    np.testing.assert_allclose(u @ np.diag(s) @ v.T, k, atol=1e-12)
    op = GaussianBlur(3, 1.0, 0.1, (6, 5, 1), threshold=0.0)
    x = jnp.zeros((6, 5, 1)).at[2, 2, 0].set(1.0)
    np.testing.assert_allclose(op.apply(x)[1:4, 1:4, 0], np.outer(taps, taps), atol=1e-6)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd number, got 4"):
        GaussianBlur(4, 1.0, 0.1, IMAGE)


def test_blur_truncated_svd():
    """With threshold > 0, singular values, pinv and projector come from one truncated SVD; apply is exact."""
    op = GaussianBlur(5, 2.0, 0.1, IMAGE)  # default threshold 3e-2 drops the smallest 1-D value 0.0089
    exact = GaussianBlur(5, 2.0, 0.1, IMAGE, threshold=0.0)
    x = _rand(6, IMAGE)
    np.testing.assert_allclose(op.apply(x), exact.apply(x))
    k, u, s, v = _blur_factors(8, gaussian_taps(5, 2.0), 3e-2)
    assert s[-1] == 0.0 and np.all(s[:-1] > 3e-2)
    s_min_exact = _blur_factors(8, gaussian_taps(5, 2.0), 0.0)[2][-1]
    np.testing.assert_allclose(s_min_exact, 0.0089, atol=1e-4)
    # Dense truncated A_r = kron(K_r', K_c') per channel; pinv of the operator = numpy pinv of A_r.
    k_t = u @ np.diag(s) @ v.T
    a_trunc = np.kron(np.kron(k_t, k_t), np.eye(2))
    np.testing.assert_allclose(_dense(op.u, IMAGE) @ np.diag(np.asarray(op.singular_values()).ravel())
                               @ _dense(op.v_t, IMAGE), a_trunc, atol=1e-5)
    np.testing.assert_allclose(_dense(op.pinv, IMAGE), np.linalg.pinv(a_trunc, rcond=1e-6), atol=2e-3)
    # The projector pinv(apply(x)) is V_r V_r^T: idempotent, and fixes A^+ y.
    p = _dense(lambda z: op.pinv(op.apply(z)), IMAGE)
    np.testing.assert_allclose(p @ p, p, atol=1e-4)
    np.testing.assert_allclose(p, p.T, atol=1e-4)
    assert round(np.trace(p)) == 2 * 7 * 7
    # A A^+ A = A holds for the truncated A, not for the exact one.
    np.testing.assert_allclose(a_trunc @ p, a_trunc, atol=1e-5)
    assert np.abs(_dense(op.apply, IMAGE) @ p - _dense(op.apply, IMAGE)).max() > 1e-3


def _closed_form_gaussian(y, mean, s, n):
    r = np.asarray(y, np.float64) - np.asarray(mean, np.float64)
    return -0.5 * np.sum(r**2) / s**2 - 0.5 * n * np.log(2 * np.pi * s**2)


def test_log_likelihood_pinned_values():
    x = jnp.arange(16.0).reshape(4, 4, 1) / 16
    y_sr = jnp.full((2, 2, 1), 0.5)
    sr = SuperResolution(2, 0.2, (4, 4, 1))
    # means [[0.15625, 0.28125], [0.65625, 0.78125]]; residual sum of squares 0.26953125; /(2*0.04) = 3.369140625
    expected = -3.369140625 - 0.5 * 4 * math.log(2 * math.pi * 0.04)
    np.testing.assert_allclose(float(sr.log_likelihood(y_sr, x)), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, -0.60714311, rtol=1e-6)

    mask = jnp.array([[1.0], [0.0], [1.0]])
    inp = Inpaint(mask, 0.5)
    y = jnp.array([[1.0], [0.0], [2.0]])
    xv = jnp.array([[0.5], [7.0], [1.0]])
    # observed residuals 0.5, 1.0: -0.5 * 1.25 / 0.25 - 0.5 * 2 * log(2 pi 0.25)
    np.testing.assert_allclose(float(inp.log_likelihood(y, xv)), -2.5 - math.log(math.pi / 2), rtol=1e-6)

    sat = Saturate(2.0, 0.1, (2, 1))
    xs = jnp.array([[0.0], [0.25]])
    ys = jnp.array([[0.1], [0.5]])
    # tanh(0) = 0, tanh(0.5) = 0.46211716; residuals 0.1, 0.03788284
    expected_sat = -0.5 * (0.01 + 0.03788284**2) / 0.01 - math.log(2 * math.pi * 0.01)
    np.testing.assert_allclose(float(sat.log_likelihood(ys, xs)), expected_sat, rtol=1e-6)
    np.testing.assert_allclose(expected_sat, 2.19553763, atol=1e-6)
    assert sat.linear is False and not hasattr(sat, "pinv")

    blur = GaussianBlur(3, 1.0, 0.3, IMAGE)
    xb, yb = _rand(7, IMAGE), _rand(8, IMAGE)
    np.testing.assert_allclose(
        float(blur.log_likelihood(yb, xb)), _closed_form_gaussian(yb, blur.apply(xb), 0.3, 128), rtol=1e-5
    )


@pytest.mark.parametrize(
    "op",
    [SuperResolution(2, 0.05, (16, 16, 2)), GaussianBlur(5, 1.0, 0.05, (16, 16, 2)), Saturate(3.0, 0.05, (16, 16, 2)),
     Inpaint(random_mask(jax.random.PRNGKey(3), (40, 3), 0.5), 0.05)],
    ids=["sr", "blur", "saturate", "inpaint"],
)
def test_measure_noise_level(op):
    x = jax.random.uniform(jax.random.PRNGKey(0), op.signal_shape)
    ys = jax.vmap(op.measure, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(1), 200), x)
    r = ys - op.apply(x)
    num = op.num_measured
    std = jnp.sqrt(jnp.sum(r**2) / (200 * num))
    np.testing.assert_allclose(float(std), 0.05, rtol=0.03)


def test_inpaint_counts_and_masks():
    mask = random_mask(jax.random.PRNGKey(0), (10, 10, 3), 0.3)
    assert int(Inpaint(mask, 0.1).num_measured) == 70 * 3
    np.testing.assert_array_equal(mask, random_mask(jax.random.PRNGKey(0), (10, 10, 3), 0.3))
    assert not np.array_equal(mask, random_mask(jax.random.PRNGKey(1), (10, 10, 3), 0.3))
    np.testing.assert_array_equal(mask[..., 0], mask[..., 2])  # channels of one pixel share it
    vmask = random_mask(jax.random.PRNGKey(2), (20, 1), 0.6)
    assert float(jnp.sum(vmask)) == 8.0
    per_channel = random_mask(jax.random.PRNGKey(0), (10, 10, 3), 0.3, per_channel=True)
    assert float(jnp.sum(per_channel)) == 210.0


def test_box_mask():
    m = box_mask((6, 8, 2), 2)
    assert float(jnp.sum(m == 0)) == 2 * 2 * 2
    np.testing.assert_array_equal(np.argwhere(np.asarray(m[..., 0]) == 0), [[2, 3], [2, 4], [3, 3], [3, 4]])
    m = box_mask((6, 8, 1), 3, top=0, left=5)
    np.testing.assert_array_equal(np.asarray(m[:3, 5:, 0]), np.zeros((3, 3)))
    assert float(jnp.sum(m)) == 48 - 9
    with pytest.raises(ValueError, match="box of size 3 at \\(top=4, left=0\\) does not fit in a 6x8 image"):
        box_mask((6, 8, 1), 3, top=4, left=0)


def _cfg(**kw):
    return ml_collections.ConfigDict(dict(noise_std=0.1, **kw))


def test_family_blind_masks():
    fam = make_operator_family(_cfg(name="inpaint_blind", hidden_min=0.3, hidden_max=0.6), (10, 10, 1))
    ops = fam.draw_batch(jax.random.PRNGKey(0), 64)
    hidden = 1.0 - jnp.mean(ops.mask, axis=(1, 2, 3))
    assert float(hidden.min()) >= 0.3 and float(hidden.max()) <= 0.6
    assert float(hidden.max() - hidden.min()) > 0.2
    y = jnp.ones((10, 10, 1))
    assert fam.draw(jax.random.PRNGKey(0)).condition(y).shape == (10, 10, 1)  # mask not shown


def test_family_per_measurement_masks_and_vmap():
    fam = make_operator_family(_cfg(name="impute", hidden_fraction=0.6, per_measurement=True), VERTEX)
    ops = fam.draw_batch(jax.random.PRNGKey(0), 5)
    assert ops.mask.shape == (5, 11, 1)
    np.testing.assert_array_equal(jnp.sum(ops.mask, axis=(1, 2)), jnp.full(5, 4.0))  # round(0.6 * 11) = 7 hidden
    x = jax.random.uniform(jax.random.PRNGKey(1), (5,) + VERTEX)
    ys = jax.vmap(lambda op, k, xi: op.measure(k, xi))(ops, jax.random.split(jax.random.PRNGKey(2), 5), x)
    cond = jax.vmap(lambda op, y: op.condition(y))(ops, ys)
    assert cond.shape == (5, 11, 2)
    np.testing.assert_array_equal(cond[..., 1:], ops.mask)
    ll = jax.vmap(lambda op, y, xi: op.log_likelihood(y, xi))(ops, ys, x)
    one = jax.tree.map(lambda a: a[3], ops).log_likelihood(ys[3], x[3])
    np.testing.assert_allclose(ll[3], one, rtol=1e-6)


def test_family_fixed_operators():
    shape = (8, 8, 1)
    cases = {
        "inpaint_box": (_cfg(name="inpaint_box", box_size=4), Inpaint),
        "sr": (_cfg(name="sr", factor=4), SuperResolution),
        "deblur": (_cfg(name="deblur", kernel_size=5, width=1.0), GaussianBlur),
        "saturate": (_cfg(name="saturate", gain=2.0), Saturate),
        "inpaint": (_cfg(name="inpaint", hidden_fraction=0.25, mask_seed=3), Inpaint),
    }
    for name, (cfg, cls) in cases.items():
        fam = make_operator_family(cfg, shape)
        op = fam.draw(jax.random.PRNGKey(0))
        assert isinstance(op, cls), name
        assert jax.tree.map(jnp.shape, fam.draw(jax.random.PRNGKey(1))) == jax.tree.map(jnp.shape, op)
    assert make_operator_family(cases["sr"][0], shape).draw(None).measurement_shape == (2, 2, 1)
    assert make_operator_family(cases["deblur"][0], shape).draw(None).threshold == 3e-2
    box = make_operator_family(cases["inpaint_box"][0], shape).draw(None)
    assert int(box.num_measured) == 64 - 16 and float(box.mask[2, 2, 0]) == 0.0
    with pytest.raises(ValueError, match="unknown operator 'blur'; known: denoise, inpaint, impute, inpaint_blind, "
                                         "inpaint_box, sr, deblur, saturate"):
        make_operator_family(_cfg(name="blur"), shape)


@pytest.mark.parametrize(
    "op",
    [SuperResolution(2, 0.1, IMAGE), GaussianBlur(3, 1.0, 0.1, IMAGE), Saturate(2.0, 0.1, IMAGE),
     Matrix.create(np.random.RandomState(2).randn(5, 128), 0.1, IMAGE)],
    ids=["sr", "blur", "saturate", "matrix"],
)
def test_broadcast_operator_under_vmap(op):
    ops = broadcast_operator(op, 3)
    x = _rand(9, (3,) + IMAGE)
    out = jax.jit(jax.vmap(lambda o, xi: o.apply(xi)))(ops, x)
    np.testing.assert_allclose(out[1], op.apply(x[1]), atol=1e-6)


SHOWN = Inpaint(random_mask(jax.random.PRNGKey(2), IMAGE, 0.4), 0.1, show_mask=True)


@pytest.mark.parametrize("op", OPS + [SHOWN], ids=IDS + ["inpaint_shown"])
def test_estimate_is_dense_pinv_of_measurement(op):
    """estimate(y) = A^+ y for a measured y, A^+ the float64 pseudo-inverse of apply's dense matrix."""
    y = op.measure(jax.random.PRNGKey(10), _rand(11, op.signal_shape))
    a_pinv = np.linalg.pinv(_dense(op.apply, op.signal_shape))
    expected = (a_pinv @ np.asarray(y, np.float64).ravel()).reshape(op.signal_shape)
    np.testing.assert_allclose(op.estimate(y), expected, atol=1e-4)


def test_inpaint_estimate_uses_the_mask_only_if_shown():
    """Blind masks: estimate(y) = y whichever operator of the family computes it; a shown mask gives mask * y."""
    fam = make_operator_family(_cfg(name="inpaint_blind", hidden_min=0.3, hidden_max=0.6), VERTEX)
    ops = fam.draw_batch(jax.random.PRNGKey(0), 2)
    assert float(jnp.abs(ops.mask[0] - ops.mask[1]).sum()) >= 2  # two different masks
    y = jax.tree.map(lambda a: a[0], ops).measure(jax.random.PRNGKey(1), 1.0 + _rand(2, VERTEX))
    estimates = jax.vmap(lambda op: op.estimate(y))(ops)
    np.testing.assert_array_equal(estimates, jnp.stack([y, y]))
    shown = Inpaint(ops.mask[1], 0.1, show_mask=True).estimate(y)
    np.testing.assert_array_equal(shown, ops.mask[1] * y)
    assert float(jnp.abs(shown - y).max()) > 0.1  # the shown mask zeroes entries the blind estimate keeps


def test_saturate_estimate():
    """arctanh(y) / gain, clipped at tanh(3)."""
    sat = Saturate(2.0, 0.1, (3, 1))
    x = jnp.array([[0.1], [-0.4], [5.0]])
    np.testing.assert_allclose(sat.estimate(sat.apply(x)), [[0.1], [-0.4], [1.5]], rtol=1e-4)
    assert float(sat.estimate(jnp.array([[1.3]]))[0, 0]) == pytest.approx(1.5, rel=1e-4)


def test_matrix_numbers_and_likelihood():
    """M = [[3, 4, 0]] on (3, 1): s = (5, 0, 0), v_1 = (0.6, 0.8, 0), A^+ y = (0.12, 0.16, 0) y; pinned likelihood."""
    op = Matrix.create([[3.0, 4.0, 0.0]], 0.5, (3, 1))
    x = jnp.array([[1.0], [1.0], [2.0]])
    np.testing.assert_allclose(op.apply(x), [7.0])
    np.testing.assert_allclose(op.singular_values()[:, 0], [5.0, 0.0, 0.0])
    np.testing.assert_allclose(abs(op.v_t(x)[0, 0]), 1.4, rtol=1e-6)  # <(0.6, 0.8, 0), x>, up to the SVD's sign
    np.testing.assert_allclose(op.pinv(jnp.array([10.0]))[:, 0], [1.2, 1.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(op.adjoint(jnp.array([2.0]))[:, 0], [6.0, 8.0, 0.0])
    assert op.measurement_shape == (1,) and op.num_measured == 1 and op.estimate(jnp.array([10.0])).shape == (3, 1)
    np.testing.assert_allclose(op.u_t(jnp.array([2.0]))[1:, 0], [0.0, 0.0])  # no measurement behind entries 1, 2
    # residual 8 - 7 = 1: -0.5 * 1 / 0.25 - 0.5 * log(2 pi 0.25)
    expected = -2.0 - 0.5 * math.log(math.pi / 2)
    np.testing.assert_allclose(float(op.log_likelihood(jnp.array([8.0]), x)), expected, rtol=1e-6)
    # A random 4 x 6 case against log N(y; M x, s^2 I) written out with the dense matrix.
    rng = np.random.RandomState(3)
    m, xr, yr = rng.randn(4, 6), rng.randn(6, 1), rng.randn(4)
    op = Matrix.create(m, 0.3, (6, 1))
    expected = _closed_form_gaussian(yr, m @ xr[:, 0], 0.3, 4)
    np.testing.assert_allclose(float(op.log_likelihood(jnp.asarray(yr), jnp.asarray(xr))), expected, rtol=1e-5)


def test_matrix_rank_deficient_and_batched():
    """A rank-2 matrix (4 x 6) has two nonzero singular values; pinv is NumPy's; per-measurement matrices vmap."""
    rng = np.random.RandomState(4)
    m = rng.randn(4, 2) @ rng.randn(2, 6)
    op = Matrix.create(m, 0.1, (6, 1))
    s = np.asarray(op.singular_values())[:, 0]
    assert np.all(s[:2] > 0.1) and np.all(s[2:] == 0.0)
    np.testing.assert_allclose(_dense(op.pinv, (4,)), np.linalg.pinv(m, rcond=1e-10), atol=1e-5)
    x = _rand(10, (6, 1))
    np.testing.assert_allclose(op.u(op.singular_values() * op.v_t(x)), op.apply(x), atol=1e-5)
    ops = jax.tree.map(lambda *a: jnp.stack(a), op, Matrix.create(2.0 * m, 0.1, (6, 1)))
    out = jax.vmap(lambda o: o.apply(x))(ops)
    np.testing.assert_allclose(out[1], 2.0 * op.apply(x), rtol=1e-5)
    with pytest.raises(ValueError, match=r"6 columns cannot act on signals of shape \(4, 1\)"):
        Matrix.create(m, 0.1, (4, 1))


def test_masks_and_kernels_from_files(tmp_path):
    from ml_collections import ConfigDict

    mask = np.ones((8, 8), np.float32)
    mask[2:5, 3:6] = 0.0
    np.save(tmp_path / "mask.npy", mask)  # without the channel axis: shared by both channels
    family = make_operator_family(ConfigDict(dict(name="inpaint", noise_std=0.1, mask_file=str(tmp_path / "mask.npy"))),
                                  IMAGE)
    op = family.draw(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(op.mask, np.broadcast_to(mask[..., None], IMAGE))
    assert not op.show_mask and float(op.num_measured) == 2 * (64 - 9)
    np.savez(tmp_path / "bad.npz", mask=np.full(IMAGE, 0.5))
    with pytest.raises(ValueError, match="mask values must be 0 \\(hidden\\) or 1 \\(observed\\)"):
        make_operator_family(ConfigDict(dict(name="inpaint", noise_std=0.1, mask_file=str(tmp_path / "bad.npz"))), IMAGE)

    # A 1-D kernel file and its rank-1 2-D form reproduce the Gaussian blur's matrix exactly.
    taps = np.array(gaussian_taps(3, 1.0))
    np.save(tmp_path / "k1.npy", taps)
    np.save(tmp_path / "k2.npy", np.outer(taps, taps))
    x = jax.random.uniform(jax.random.PRNGKey(0), IMAGE)
    gaussian = GaussianBlur(kernel_size=3, width=1.0, noise_std=0.1, signal_shape=IMAGE)
    for name in ("k1.npy", "k2.npy"):
        cfg = ConfigDict(dict(name="deblur", noise_std=0.1, kernel_file=str(tmp_path / name)))
        blur = make_operator_family(cfg, IMAGE).draw(jax.random.PRNGKey(0))
        np.testing.assert_allclose(blur.apply(x), gaussian.apply(x), atol=1e-6)
        np.testing.assert_allclose(blur.pinv(blur.apply(x)), gaussian.pinv(gaussian.apply(x)), atol=1e-4)
    np.save(tmp_path / "box.npy", np.eye(3) / 3)
    with pytest.raises(ValueError, match="the 2-D kernel must be separable \\(rank 1\\), its second singular value is 1 "):
        make_operator_family(ConfigDict(dict(name="deblur", noise_std=0.1, kernel_file=str(tmp_path / "box.npy"))),
                             IMAGE)


def test_blind_training_from_a_file_keeps_each_measurements_mask(tmp_path):
    # The blind flow is not told the masks, but its likelihood needs each measurement's own (NaN in y marks them).
    from apd.training.flow import measurement_training_set

    config = ml_collections.ConfigDict(dict(operator=_cfg(name="inpaint_blind", hidden_min=0.3, hidden_max=0.6)))
    fam = make_operator_family(config.operator, VERTEX)
    y = np.full((3,) + VERTEX, 0.5, np.float32)
    y[0, :2], y[1, 5:9], y[2, 10] = np.nan, np.nan, np.nan
    np.save(tmp_path / "y.npy", y)
    values, ops, _ = measurement_training_set(config, fam, str(tmp_path / "y.npy"))
    np.testing.assert_array_equal(np.asarray(ops.mask)[..., 0], ~np.isnan(y[..., 0]))
    assert not np.isnan(values).any()
