"""Forward operators y = A(x) + n, n ~ N(0, s^2 I), acting on ONE signal in its natural shape S.

Every operator is a pytree (flax struct dataclass): arrays that may differ per measurement (a mask) are leaves,
so a batch of per-measurement operators is one operator with a leading axis, used under `jax.vmap`. Operators
fixed by a few numbers (a pooling factor, a blur width) keep those as static fields and build their matrices
(float64 NumPy, cached, cast to the input dtype) when traced.

Common interface (x has shape S = `signal_shape`, y has shape `measurement_shape`):
  apply(x) -> y_clean            log_likelihood(y, x) -> scalar, nats, with every constant
  measure(key, x) -> y           condition(y) -> array the conditional flow sees (y, plus the mask where
  noise_std, num_measured         masks differ per measurement and the flow is told them)
  estimate(y) -> S               a signal-space estimate x0(y) the flow starts from: pinv(y) if linear, except
                                 where the flow is not told the mask (Inpaint below): y itself
Linear operators (`linear = True`) add adjoint(y) (exact A^T), pinv(y) (Moore-Penrose A^+; P = A^+ A is
pinv(apply(x))), and where cheap the SVD form A = U diag(s) V^T:
  singular_values() -> s, shape S        v_t(x): S -> S (spectral coefficients), v(c): S -> S
  u_t(y): measurement -> S (zero at entries with no measurement), u(c): S -> measurement
so apply(x) == u(singular_values() * v_t(x)). The spectral shape is always the signal shape S; entries of
the null space carry singular value 0.

Operators: Denoise, Inpaint (random_mask or box_mask), SuperResolution, GaussianBlur, Matrix (a dense M on the
flattened signal), Saturate (nonlinear).

`OperatorFamily.draw(key)` gives the operator of one measurement: fixed operators ignore the key; random
masks drawn per measurement come from it, reproducibly.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def _gaussian_log_norm(num: float, noise_std: float) -> float:
    return -0.5 * num * math.log(2 * math.pi * noise_std**2)


class _Gaussian:
    """Gaussian likelihood and measurement shared by all operators (needs apply, noise_std, num_measured)."""

    def log_likelihood(self, y: jax.Array, x: jax.Array) -> jax.Array:
        """log N(y; A(x), s^2 I) in nats for one signal x and one measurement y."""
        r = y - self.apply(x)
        return -0.5 * jnp.sum(r**2) / self.noise_std**2 + _gaussian_log_norm(self.num_measured, self.noise_std)

    def measure(self, key: jax.Array, x: jax.Array) -> jax.Array:
        y = self.apply(x)
        return y + self.noise_std * jax.random.normal(key, y.shape, y.dtype)

    def condition(self, y: jax.Array) -> jax.Array:
        return y

    def estimate(self, y: jax.Array) -> jax.Array:
        return self.pinv(y)


class _FullMeasurement(_Gaussian):
    """Operators whose y has the signal's shape, every entry measured."""

    @property
    def measurement_shape(self):
        return self.signal_shape

    @property
    def num_measured(self) -> int:
        return math.prod(self.signal_shape)


@struct.dataclass
class Denoise(_FullMeasurement):
    """A = I."""

    noise_std: float = struct.field(pytree_node=False)
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False)
    linear = True

    def apply(self, x):
        return x

    adjoint = pinv = apply

    def singular_values(self):
        return jnp.ones(self.signal_shape)

    v_t = v = u_t = u = apply


@struct.dataclass
class Inpaint(_Gaussian):
    """A = diag(mask), zero-filled: y has the signal's shape and is 0 where the mask is 0.

    mask: shape S, 1 where the entry is observed. show_mask: whether the flow's condition includes the mask
    (True when masks differ per measurement, False for a fixed mask or in blind mode).

    The flow's inputs depend only on what it is told: condition(y) is y (and the mask if shown), and
    estimate(y) is pinv(y) = mask * y if the mask is shown, else y itself. Every y from measure or apply is
    already 0 where the mask is 0, so the two agree there: fixed-mask tasks are unchanged, and a blind
    measurement's condition does not depend on which operator builds it (the sampler has no true mask).
    """

    mask: jax.Array
    noise_std: float = struct.field(pytree_node=False)
    show_mask: bool = struct.field(pytree_node=False, default=False)
    linear = True

    @property
    def signal_shape(self):
        return self.mask.shape

    measurement_shape = signal_shape

    @property
    def num_measured(self):
        return jnp.sum(self.mask)

    def apply(self, x):
        return self.mask * x

    adjoint = pinv = apply

    def measure(self, key, x):
        return self.mask * (x + self.noise_std * jax.random.normal(key, x.shape, x.dtype))

    def condition(self, y):
        return jnp.concatenate([y, self.mask], axis=-1) if self.show_mask else y

    def estimate(self, y):
        """pinv(y) = mask * y if the flow is told the mask, else y (zero-filled already), shape S."""
        return self.pinv(y) if self.show_mask else y

    def singular_values(self):
        return self.mask

    def v_t(self, x):
        return x

    v = u_t = u = v_t


def _check_image_shape(signal_shape, name):
    if len(signal_shape) != 3:
        raise ValueError(f"{name} needs an (H, W, C) image signal_shape, got {signal_shape}")


@functools.lru_cache(maxsize=None)
def _block_basis(factor: int) -> np.ndarray:
    """Orthogonal (f^2, f^2) matrix whose first column is the unit all-ones vector 1/f (a Householder reflection)."""
    n = factor * factor
    ones = np.full(n, 1.0 / factor)
    w = np.eye(n)[0] - ones
    return np.eye(n) - 2.0 * np.outer(w, w) / (w @ w)


@struct.dataclass
class SuperResolution(_Gaussian):
    """Average pooling of each factor x factor block, per channel: (H, W, C) -> (H/f, W/f, C).

    Per block A = (1/f^2) 1^T = u s v^T with u = 1, s = 1/f, v = 1/f (unit all-ones); the other f^2 - 1 right
    singular vectors are a fixed orthonormal complement (Householder). In spectral layout the coefficients of
    block (i, j) fill that block's f x f entries, row-major; the one with s = 1/f sits at its top-left entry.
    """

    factor: int = struct.field(pytree_node=False)
    noise_std: float = struct.field(pytree_node=False)
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False)
    linear = True

    def __post_init__(self):
        _check_image_shape(self.signal_shape, "SuperResolution")
        h, w, _ = self.signal_shape
        if self.factor < 2 or h % self.factor or w % self.factor:
            raise ValueError(f"SuperResolution factor {self.factor} must be >= 2 and divide H={h} and W={w}")

    @property
    def measurement_shape(self):
        h, w, c = self.signal_shape
        return (h // self.factor, w // self.factor, c)

    @property
    def num_measured(self) -> int:
        return math.prod(self.measurement_shape)

    def _blocks(self, x):
        """(H, W, C) -> (H/f, W/f, f^2, C)."""
        f = self.factor
        h, w, c = self.signal_shape
        return x.reshape(h // f, f, w // f, f, c).transpose(0, 2, 1, 3, 4).reshape(h // f, w // f, f * f, c)

    def _unblocks(self, b):
        """(H/f, W/f, f^2, C) -> (H, W, C)."""
        f = self.factor
        h, w, c = self.signal_shape
        return b.reshape(h // f, w // f, f, f, c).transpose(0, 2, 1, 3, 4).reshape(h, w, c)

    def apply(self, x):
        return jnp.mean(self._blocks(x), axis=2)

    def pinv(self, y):
        """Nearest-neighbour upsampling: each low-resolution pixel replicated over its block."""
        f = self.factor
        return jnp.repeat(jnp.repeat(y, f, axis=0), f, axis=1)

    def adjoint(self, y):
        return self.pinv(y) / self.factor**2

    def singular_values(self):
        f = self.factor
        first = jnp.zeros((f, f)).at[0, 0].set(1.0 / f)
        h, w, c = self.signal_shape
        return jnp.broadcast_to(jnp.tile(first, (h // f, w // f))[..., None], self.signal_shape)

    def v_t(self, x):
        q = jnp.asarray(_block_basis(self.factor), x.dtype)
        return self._unblocks(jnp.einsum("kj,abkc->abjc", q, self._blocks(x)))

    def v(self, c):
        q = jnp.asarray(_block_basis(self.factor), c.dtype)
        return self._unblocks(jnp.einsum("kj,abjc->abkc", q, self._blocks(c)))

    def u_t(self, y):
        f = self.factor
        return jnp.zeros(self.signal_shape, y.dtype).at[::f, ::f].set(y)

    def u(self, c):
        return c[:: self.factor, :: self.factor]


def gaussian_taps(kernel_size: int, width: float) -> tuple[float, ...]:
    """The 1-D Gaussian kernel: taps at offsets -k//2..k//2 with weights exp(-o^2 / (2 width^2)), summing to 1."""
    half = kernel_size // 2
    offsets = np.arange(-half, half + 1)
    taps = np.exp(-(offsets**2) / (2.0 * width**2))
    return tuple(float(t) for t in taps / taps.sum())


@functools.lru_cache(maxsize=None)
def _blur_factors(n: int, taps: tuple[float, ...], threshold: float):
    """1-D zero-boundary blur matrix K (n, n) with the given odd number of taps (centred) and its SVD
    K = U diag(s) V^T, float64. Returns (K, U, s_truncated, V) where singular values below `threshold` are 0."""
    half = len(taps) // 2
    k = np.zeros((n, n))
    for o, t in zip(range(-half, half + 1), taps):
        k += t * np.eye(n, k=o)
    u, s, vt = np.linalg.svd(k)
    return k, u, np.where(s >= threshold, s, 0.0), vt.T


def read_array_file(path, key: str, what: str) -> np.ndarray:
    """The array of a .npy file, or array `key` of an .npz file, as float64; one-line errors naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.endswith(".npz"):
        with np.load(path) as f:
            if key not in f.files:
                raise ValueError(f"{what} file {path} has no array {key!r} (it holds {f.files})")
            return np.asarray(f[key], np.float64)
    if path.endswith(".npy"):
        return np.asarray(np.load(path), np.float64)
    raise ValueError(f"{what} file {path} must be .npy or .npz")


def read_mask_file(path, signal_shape: tuple[int, ...]) -> jax.Array:
    """One shared mask from a file (.npy, or .npz array 'mask'): shape S, or S without its channel axis (then
    shared by all channels); values 0 (hidden) or 1 (observed). Returns float32 (S)."""
    mask = read_array_file(path, "mask", "mask")
    shape = tuple(signal_shape)
    if mask.shape == shape[:-1]:
        mask = np.broadcast_to(mask[..., None], shape)
    if mask.shape != shape:
        raise ValueError(f"mask file {path}: mask must have shape {shape} (or {shape[:-1]}), got {mask.shape}")
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"mask file {path}: mask values must be 0 (hidden) or 1 (observed)")
    return jnp.asarray(mask, jnp.float32)


def read_kernel_file(path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(row taps, column taps) of a separable blur kernel from a file (.npy, or .npz array 'kernel'): a 1-D
    kernel (k,) used along both axes, or a rank-1 2-D kernel (k_r, k_c), factored by its SVD; odd sizes."""
    kernel = read_array_file(path, "kernel", "kernel")
    if kernel.ndim == 1:
        rows = cols = kernel
    elif kernel.ndim == 2:
        u, s, vt = np.linalg.svd(kernel)
        if s.size > 1 and s[1] > 1e-6 * s[0]:
            raise ValueError(f"kernel file {path}: the 2-D kernel must be separable (rank 1), its second singular "
                             f"value is {s[1] / s[0]:.3g} of the first")
        sign = 1.0 if u[:, 0].sum() >= 0 else -1.0
        rows, cols = sign * u[:, 0] * np.sqrt(s[0]), sign * vt[0] * np.sqrt(s[0])
    else:
        raise ValueError(f"kernel file {path}: the kernel must be 1-D or 2-D, got shape {kernel.shape}")
    if any(len(t) % 2 == 0 for t in (rows, cols)) or not np.all(np.isfinite(kernel)):
        raise ValueError(f"kernel file {path}: the kernel needs finite values and odd sizes, got shape {kernel.shape}")
    return tuple(float(t) for t in rows), tuple(float(t) for t in cols)


@struct.dataclass
class GaussianBlur(_FullMeasurement):
    """Separable blur per channel with zeros outside the image: A X = K_r X K_c^T, (H,W,C) -> (H,W,C).

    kernel_size: odd number of taps; width: Gaussian std in pixels; or taps = (row taps, column taps), any
    separable kernel with odd sizes (e.g. from `read_kernel_file`), which replaces the Gaussian. apply is the
    exact blur. The SVD comes
    from the 1-D SVDs (V^T x = V_r^T X V_c, s_ij = s_i^r s_j^c) with 1-D singular values below `threshold`
    set to 0 first (3e-2 as in DDRM); singular_values(), pinv and the projector P = pinv(apply(x)) = V_r V_r^T
    all come from this one truncated SVD, so A A^+ A = A holds exactly only for threshold = 0.
    """

    kernel_size: int = struct.field(pytree_node=False)
    width: float = struct.field(pytree_node=False)
    noise_std: float = struct.field(pytree_node=False)
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False)
    threshold: float = struct.field(pytree_node=False, default=3e-2)
    taps: tuple[tuple[float, ...], tuple[float, ...]] | None = struct.field(pytree_node=False, default=None)
    linear = True

    def __post_init__(self):
        _check_image_shape(self.signal_shape, "GaussianBlur")
        if self.taps is not None:
            if len(self.taps) != 2 or any(len(t) % 2 == 0 for t in self.taps):
                raise ValueError("GaussianBlur taps must be (row taps, column taps), each of odd length")
            return
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"GaussianBlur kernel_size must be a positive odd number, got {self.kernel_size}")
        if self.width <= 0:
            raise ValueError(f"GaussianBlur width must be positive, got {self.width}")

    def _factors(self, axis: int, dtype):
        """(K, U, s, V) of the 1-D blur along image axis 0 (rows) or 1 (columns), as jnp arrays."""
        taps = gaussian_taps(self.kernel_size, float(self.width)) if self.taps is None else self.taps[axis]
        mats = _blur_factors(self.signal_shape[axis], tuple(taps), float(self.threshold))
        return tuple(jnp.asarray(m, dtype) for m in mats)

    @staticmethod
    def _sandwich(left, x, right):
        """left @ X @ right per channel: (H', H) (H, W, C) (W, W') -> (H', W', C)."""
        return jnp.einsum("ih,hwc,wj->ijc", left, x, right)

    def apply(self, x):
        k_r, k_c = self._factors(0, x.dtype)[0], self._factors(1, x.dtype)[0]
        return self._sandwich(k_r, x, k_c.T)

    def adjoint(self, y):
        k_r, k_c = self._factors(0, y.dtype)[0], self._factors(1, y.dtype)[0]
        return self._sandwich(k_r.T, y, k_c)

    def singular_values(self):
        s_r, s_c = self._factors(0, jnp.float32)[2], self._factors(1, jnp.float32)[2]
        return jnp.broadcast_to((s_r[:, None] * s_c[None, :])[..., None], self.signal_shape)

    def v_t(self, x):
        v_r, v_c = self._factors(0, x.dtype)[3], self._factors(1, x.dtype)[3]
        return self._sandwich(v_r.T, x, v_c)

    def v(self, c):
        v_r, v_c = self._factors(0, c.dtype)[3], self._factors(1, c.dtype)[3]
        return self._sandwich(v_r, c, v_c.T)

    def u_t(self, y):
        u_r, u_c = self._factors(0, y.dtype)[1], self._factors(1, y.dtype)[1]
        return self._sandwich(u_r.T, y, u_c)

    def u(self, c):
        u_r, u_c = self._factors(0, c.dtype)[1], self._factors(1, c.dtype)[1]
        return self._sandwich(u_r, c, u_c.T)

    def pinv(self, y):
        """V diag(1/s) U^T y over the singular values kept by the threshold."""
        s = self.singular_values().astype(y.dtype)
        kept = s > 0
        return self.v(jnp.where(kept, self.u_t(y) / jnp.where(kept, s, 1.0), 0.0))


@struct.dataclass
class Matrix(_Gaussian):
    """y = M x_flat + n for a dense matrix M (m, d) acting on the flattened signal of shape S, d = prod(S); y (m,).

    Build it with `Matrix.create`, which computes the SVD M = U diag(s) V^T once in float64 NumPy. Every array
    is a leaf, so operators with different matrices batch along a leading axis. Spectral layout: the d
    coefficients V^T x_flat in order of decreasing singular value, reshaped to S; singular values below
    max(m, d) * eps * s_max (NumPy's rank tolerance) are 0, and so are the d - m entries past the m-th.
    """

    matrix: jax.Array  # M (m, d)
    left: jax.Array  # U (m, m)
    spectrum: jax.Array  # s padded with zeros to d entries, shape S
    right: jax.Array  # V (d, d)
    inverse: jax.Array  # the Moore-Penrose inverse V diag(1/s) U^T over the nonzero s, (d, m)
    noise_std: float = struct.field(pytree_node=False)
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False)
    linear = True

    @classmethod
    def create(cls, matrix, noise_std: float, signal_shape: tuple[int, ...] | None = None) -> "Matrix":
        """The operator of matrix (m, d) on signals of shape signal_shape (default (d,))."""
        a = np.asarray(matrix, np.float64)
        if a.ndim != 2:
            raise ValueError(f"Matrix needs a 2-D matrix (m, d), got shape {a.shape}")
        shape = tuple(signal_shape) if signal_shape is not None else (a.shape[1],)
        if math.prod(shape) != a.shape[1]:
            raise ValueError(f"a matrix with {a.shape[1]} columns cannot act on signals of shape {shape}")
        u, s, vt = np.linalg.svd(a)
        s = np.where(s > max(a.shape) * np.finfo(np.float64).eps * s.max(initial=0.0), s, 0.0)
        spectrum = np.zeros(a.shape[1])
        spectrum[: s.size] = s
        kept = s > 0
        inverse = (vt[: s.size][kept].T / s[kept]) @ u[:, : s.size][:, kept].T
        leaves = (a, u, spectrum.reshape(shape), vt.T, inverse)
        return cls(*(jnp.asarray(leaf, jnp.float32) for leaf in leaves), noise_std=float(noise_std), signal_shape=shape)

    @property
    def measurement_shape(self):
        return self.matrix.shape[-2:-1]

    @property
    def num_measured(self) -> int:
        return self.matrix.shape[-2]

    def apply(self, x):
        return self.matrix @ x.reshape(-1)

    def adjoint(self, y):
        return (self.matrix.T @ y).reshape(self.signal_shape)

    def pinv(self, y):
        return (self.inverse @ y).reshape(self.signal_shape)

    def singular_values(self):
        return self.spectrum

    def v_t(self, x):
        return (self.right.T @ x.reshape(-1)).reshape(self.signal_shape)

    def v(self, c):
        return (self.right @ c.reshape(-1)).reshape(self.signal_shape)

    def u_t(self, y):
        """U^T y in the first min(m, d) spectral entries, zeros after (components beyond d have s = 0: dropped)."""
        k = min(self.matrix.shape[-2:])
        d = self.matrix.shape[-1]
        return jnp.zeros(d, y.dtype).at[:k].set((self.left.T @ y)[:k]).reshape(self.signal_shape)

    def u(self, c):
        k = min(self.matrix.shape[-2:])
        return self.left[:, :k] @ c.reshape(-1)[:k]


@struct.dataclass
class Saturate(_FullMeasurement):
    """Saturating sensor y = tanh(gain * x) + n, elementwise; nonlinear (no adjoint, pinv or SVD)."""

    gain: float = struct.field(pytree_node=False)
    noise_std: float = struct.field(pytree_node=False)
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False)
    linear = False

    def apply(self, x):
        return jnp.tanh(self.gain * x)

    def estimate(self, y):
        """arctanh(y) / gain with y clipped to |y| <= tanh(3), so noise near saturation stays finite."""
        bound = math.tanh(3.0)
        return jnp.arctanh(jnp.clip(y, -bound, bound)) / self.gain


def random_mask(key: jax.Array, signal_shape: tuple[int, ...], hidden_fraction, per_channel: bool = False):
    """Mask of shape S with round(hidden_fraction * n) entries hidden (0), the rest 1.

    Entries are pixels/vertices: all channels of one entry share its value unless per_channel.
    hidden_fraction may be a traced scalar (blind mode draws it per measurement).
    """
    entry_shape = signal_shape if per_channel else signal_shape[:-1]
    n = math.prod(entry_shape)
    ranks = jnp.argsort(jax.random.uniform(key, (n,)))
    num_hidden = jnp.round(hidden_fraction * n)
    mask = (ranks >= num_hidden).astype(jnp.float32).reshape(entry_shape)
    if not per_channel:
        mask = jnp.broadcast_to(mask[..., None], signal_shape)
    return mask


def box_mask(signal_shape: tuple[int, ...], size: int, top: int | None = None, left: int | None = None):
    """Mask of an (H, W, C) image with the size x size box at rows top.., columns left.. hidden (0), all channels.

    top / left default to centring the box.
    """
    _check_image_shape(signal_shape, "box_mask")
    h, w, _ = signal_shape
    top = (h - size) // 2 if top is None else top
    left = (w - size) // 2 if left is None else left
    if size < 1 or top < 0 or left < 0 or top + size > h or left + size > w:
        raise ValueError(f"box of size {size} at (top={top}, left={left}) does not fit in a {h}x{w} image")
    mask = np.ones(signal_shape, np.float32)
    mask[top : top + size, left : left + size] = 0.0
    return jnp.asarray(mask)


@dataclasses.dataclass(frozen=True)
class OperatorFamily:
    """How the operator of each measurement is made: `draw(key)` -> operator (a pytree)."""

    draw: Callable[[jax.Array], Any]
    signal_shape: tuple[int, ...]

    def draw_batch(self, key: jax.Array, n: int):
        """n operators stacked along a leading axis (use with jax.vmap)."""
        return jax.vmap(self.draw)(jax.random.split(key, n))


OPERATOR_NAMES = ("denoise", "inpaint", "impute", "inpaint_blind", "inpaint_box", "sr", "deblur", "saturate")


def make_operator_family(cfg, signal_shape: tuple[int, ...]) -> OperatorFamily:
    """Build the operator family named by cfg.name from an ml_collections config section.

    Recognised names and their settings (every name also takes noise_std):
      denoise
      inpaint, impute              hidden_fraction, mask_seed, per_measurement (draw a mask per y), or
                                   mask_file (one shared mask from a .npy/.npz file, replacing the drawn one);
                                   'impute' is the same operator, named for vertex signals (V, C)
      inpaint_blind                hidden_min, hidden_max (mask level per y, not shown to the flow)
      inpaint_box                  box_size, box_top, box_left (optional; default: centred)
      sr                           factor (average pooling)
      deblur                       kernel_size, width, threshold (optional, default 3e-2), or kernel_file (a
                                   separable kernel from a .npy/.npz file, replacing the Gaussian)
      saturate                     gain
    """
    name = cfg.name
    signal_shape = tuple(signal_shape)
    s = float(cfg.noise_std)
    if name == "denoise":
        op = Denoise(noise_std=s, signal_shape=signal_shape)
        return OperatorFamily(lambda key: op, signal_shape)
    if name in ("inpaint", "impute"):
        if cfg.get("per_measurement", False):
            return OperatorFamily(
                lambda key: Inpaint(random_mask(key, signal_shape, cfg.hidden_fraction), s, show_mask=True),
                signal_shape,
            )
        if cfg.get("mask_file"):
            mask = read_mask_file(cfg.mask_file, signal_shape)
        else:
            mask = random_mask(jax.random.PRNGKey(cfg.mask_seed), signal_shape, cfg.hidden_fraction)
        op = Inpaint(mask, s)
        return OperatorFamily(lambda key: op, signal_shape)
    if name == "inpaint_blind":

        def draw(key):
            k_level, k_mask = jax.random.split(key)
            level = jax.random.uniform(k_level, (), minval=cfg.hidden_min, maxval=cfg.hidden_max)
            return Inpaint(random_mask(k_mask, signal_shape, level), s, show_mask=False)

        return OperatorFamily(draw, signal_shape)
    if name == "inpaint_box":
        op = Inpaint(box_mask(signal_shape, cfg.box_size, cfg.get("box_top"), cfg.get("box_left")), s)
        return OperatorFamily(lambda key: op, signal_shape)
    if name == "sr":
        op = SuperResolution(factor=int(cfg.factor), noise_std=s, signal_shape=signal_shape)
        return OperatorFamily(lambda key: op, signal_shape)
    if name == "deblur":
        taps = read_kernel_file(cfg.kernel_file) if cfg.get("kernel_file") else None
        op = GaussianBlur(
            kernel_size=int(cfg.get("kernel_size") or 0) if taps is None else len(taps[0]),
            width=float(cfg.get("width") or 0.0),
            noise_std=s,
            signal_shape=signal_shape,
            threshold=float(cfg.get("threshold", 3e-2)),
            taps=taps,
        )
        return OperatorFamily(lambda key: op, signal_shape)
    if name == "saturate":
        op = Saturate(gain=float(cfg.gain), noise_std=s, signal_shape=signal_shape)
        return OperatorFamily(lambda key: op, signal_shape)
    raise ValueError(f"unknown operator {name!r}; known: {', '.join(OPERATOR_NAMES)}")



def broadcast_operator(op, n: int):
    """The same operator n times along a leading axis, the batched form the samplers take."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), op)
