"""Measurement files a user brings, checked against the operator a flow was trained for.

File format (DESIGN "Files a user brings"): `.npy` holding y (N, *M), or `.npz` with the array `y` (N, *M)
and, where measurements have masks, `mask` (N, *S) or one shared (S); a single measurement (M) is read
as N = 1. NaN in y means "not measured" and is accepted only where the operator has a mask: it becomes
mask 0 there, explicitly, and y is zero-filled as the operator's own measurements are.

    y, mask = read_measurement_file("y.npz")                    # float64 arrays, mask None if absent
    y, ops = prepare_measurements(y, mask, reference_operator)   # y (N,*M) float32, N operators (leading axis)

Every problem raises ValueError (FileNotFoundError for a missing file) with one line that names it.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from apd.operators import Denoise, GaussianBlur, Inpaint, Saturate, SuperResolution, broadcast_operator

SIGMAS = 6.0  # noise standard deviations allowed beyond a measurement's possible range
SLACK = 0.5  # and this much more: catches data on another scale (0..255) without refusing odd but real values


def read_measurement_file(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(y, mask or None) of a .npy (y only) or .npz ('y', optional 'mask') file, as float64."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"measurement file {path} does not exist")
    if path.endswith(".npy"):
        return np.asarray(np.load(path), np.float64), None
    if not path.endswith(".npz"):
        raise ValueError(f"measurement file {path} must be .npy (the array y) or .npz (arrays 'y' and 'mask')")
    with np.load(path) as f:
        if "y" not in f.files:
            raise ValueError(f"measurement file {path} has no array 'y' (it holds {f.files}); "
                             "save it with np.savez(path, y=y) (and mask=mask where each y has its own mask)")
        unknown = [k for k in f.files if k not in ("y", "mask")]
        if unknown:
            raise ValueError(f"measurement file {path} holds arrays {unknown} besides 'y' and 'mask'")
        mask = np.asarray(f["mask"], np.float64) if "mask" in f.files else None
        return np.asarray(f["y"], np.float64), mask


def write_measurement_file(path: str, y, mask=None) -> str:
    """Write y (N,*M) (and mask (N,*S) if given) as an .npz that `read_measurement_file` reads; returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {"y": np.asarray(y, np.float32)}
    if mask is not None:
        arrays["mask"] = np.asarray(mask, np.float32)
    np.savez_compressed(path, **arrays)
    return path


def measurement_range(op) -> tuple[float, float] | None:
    """(low, high) that A(x) can reach for signals x in [0, 1], or None when unknown (e.g. a dense matrix)."""
    if isinstance(op, (Denoise, Inpaint, SuperResolution, GaussianBlur)):
        if isinstance(op, GaussianBlur) and op.taps is not None and min(min(t) for t in op.taps) < 0:
            return None
        return 0.0, 1.0
    if isinstance(op, Saturate):
        return 0.0, float(np.tanh(op.gain))
    return None


def prepare_measurements(y, mask, op, operator_name: str = "the task's operator", blind: bool = False):
    """Check measurements against the operator `op` a flow was trained for; returns (y, ops).

    y: (N,*M) or (M), NaN where not measured (masked operators only); mask: None, one mask (S) or one per
    measurement (N,*S), values 0/1. op: the reference operator of the task (for masks drawn per measurement,
    any Inpaint of the family: its show_mask and noise are used). blind: the task's masks vary per measurement
    and the flow is not told them (inpaint_blind), so any mask is accepted. Returns y (N,*M) float32,
    zero-filled where not measured, and N operators (leading axis N): the given masks where the flow is told
    them and in blind mode (where the flow ignores them but a likelihood needs them), otherwise op itself N times,
    after checking that every given mask equals a fixed-mask op's mask.
    """
    y = np.asarray(y, np.float64)
    shape = tuple(op.measurement_shape)
    if y.shape == shape:
        y = y[None]
    if y.ndim != len(shape) + 1 or y.shape[1:] != shape or y.shape[0] == 0:
        raise ValueError(f"y has shape {y.shape}; this task takes measurements (N, {', '.join(map(str, shape))})"
                         f" or one measurement {shape}")
    n = y.shape[0]
    if np.isinf(y).any():
        raise ValueError(f"y holds {int(np.isinf(y).sum())} infinite value(s); only NaN (not measured) is allowed, "
                         "and only where the operator has a mask")
    missing = np.isnan(y)
    if not isinstance(op, Inpaint):
        if missing.any():
            raise ValueError(f"y holds {int(missing.sum())} NaN value(s), but {operator_name} has no mask: NaN means "
                             "'not measured' only for inpainting and imputation tasks")
        if mask is not None:
            raise ValueError(f"a mask was given, but {operator_name} has no mask")
        _check_range(y, op)
        return jnp.asarray(y, jnp.float32), broadcast_operator(op, n)

    signal_shape = tuple(op.signal_shape)
    if mask is not None:
        mask = np.asarray(mask, np.float64)
        if mask.shape == signal_shape:
            mask = np.broadcast_to(mask, (n,) + signal_shape)
        if mask.shape != (n,) + signal_shape:
            raise ValueError(f"mask has shape {mask.shape}; expected one mask {signal_shape} or one per "
                             f"measurement ({n}, {', '.join(map(str, signal_shape))})")
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError("mask values must be 0 (not measured) or 1 (measured)")
        clash = missing & (mask == 1)
        if clash.any():
            raise ValueError(f"y is NaN at {int(clash.sum())} entries that the mask marks as measured")
    if missing.any():
        mask = (np.ones((n,) + signal_shape) if mask is None else mask) * ~missing
    if mask is None:
        if op.show_mask:
            raise ValueError(f"{operator_name} has a mask per measurement that the flow is told: give it as the "
                             "array 'mask' (N, *S) in the .npz file, or NaN in y where not measured")
        if blind:
            raise ValueError(f"{operator_name} is blind (its masks vary per measurement): mark the entries not "
                             "measured with NaN in y or give the array 'mask' (N, *S)")
        mask = np.broadcast_to(np.asarray(op.mask), (n,) + signal_shape)
    elif not (op.show_mask or blind):
        differ = np.sum(mask != np.asarray(op.mask)[None], axis=tuple(range(1, mask.ndim)))
        if differ.any():
            i = int(np.argmax(differ > 0))
            raise ValueError(f"the sampler was trained for one fixed mask ({operator_name}); the mask of measurement "
                             f"{i} differs from it at {int(differ[i])} entries: train a flow for your mask with "
                             "--config.operator.mask_file=<mask.npy>, or with per_measurement=True")
    y = np.where(mask == 1, y, 0.0)
    _check_range(np.where(mask == 1, y, np.nan), op)
    y = jnp.asarray(y, jnp.float32)
    if op.show_mask or blind:
        return y, Inpaint(jnp.asarray(mask, jnp.float32), op.noise_std, show_mask=op.show_mask)
    return y, broadcast_operator(op, n)


def accepted_range(op) -> tuple[float, float] | None:
    """measurement_range(op) widened by SLACK + SIGMAS noise std (None when unknown): measurements beyond it are
    on another scale than the training data."""
    bounds = measurement_range(op)
    if bounds is None:
        return None
    margin = SLACK + SIGMAS * float(op.noise_std)
    return bounds[0] - margin, bounds[1] + margin


def _check_range(y: np.ndarray, op) -> None:
    bounds, accepted = measurement_range(op), accepted_range(op)
    if bounds is None:
        return
    low, high = bounds
    lo, hi = np.nanmin(y), np.nanmax(y)
    if lo < accepted[0] or hi > accepted[1]:
        raise ValueError(f"y ranges over [{lo:.4g}, {hi:.4g}], far outside [{low:g}, {high:.4g}] that this task's "
                         f"measurements of signals in [0, 1] reach (noise s = {op.noise_std:g}): scale y like the "
                         "training data")


def split_batches(n: int, batch: int) -> list[slice]:
    """Consecutive slices of at most `batch` rows covering range(n)."""
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


def take(tree, index):
    """Rows `index` of every leaf of a batched pytree (operators with a leading axis)."""
    return jax.tree.map(lambda a: a[index], tree)
