"""The Dataset record every loader returns, and where loaders look for their files.

File lookup: `cfg.path` (a file, or a folder holding the file) if given; else the folder named by the
environment variable APD_DATA_DIR; else `<repo root>/../shared/data` when that folder exists. A missing
file raises FileNotFoundError with one line naming the file and where to put it. A file listed in a SHA256SUMS
file beside it (as in ../shared/data) must match its checksum, else ValueError names it. Nothing here reaches the
network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

ENV_VAR = "APD_DATA_DIR"
SHARED_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KINDS = ("image", "mesh", "sphere")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Signals in [0,1] with a fixed split.

    train, val, test: float32 arrays (N, *signal_shape), N may be 0.
    kind: 'image' (signal (H,W,C)), 'mesh' or 'sphere' (signal (V,C), one row per vertex).
    split: how the split was made (sizes, seeds, id ranges, dates, source file), for the record.
    vertices (V,3) float32 and faces (F,3) int32 or None: the mesh ('mesh' and 'sphere' only).
    lat (46,), lon (90,) in degrees and grid_shape (46,90): the grid ('sphere' only); vertex
        index = row * len(lon) + column, row 0 is lat[0].
    labels: optional {'train'|'val'|'test': int array (N,)} class labels.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    signal_shape: tuple[int, ...]
    kind: str
    split: dict[str, Any]
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    grid_shape: tuple[int, int] | None = None
    labels: dict[str, np.ndarray] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"dataset kind must be one of {KINDS}, got {self.kind!r}")
        for part in ("train", "val", "test"):
            x = getattr(self, part)
            if x.dtype != np.float32 or x.shape[1:] != tuple(self.signal_shape):
                raise ValueError(
                    f"{self.name}.{part} must be float32 (N, {', '.join(map(str, self.signal_shape))}),"
                    f" got {x.dtype} {x.shape}"
                )
        if self.kind != "image" and self.vertices is None:
            raise ValueError(f"{self.name}: a {self.kind} dataset needs vertices")


def default_data_dir(filename: str) -> Path:
    """APD_DATA_DIR if set, else ../shared/data beside the repository; raises when neither exists."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    if SHARED_DATA_DIR.is_dir():
        return SHARED_DATA_DIR
    raise FileNotFoundError(
        f"{filename} not found: {ENV_VAR} is unset and {SHARED_DATA_DIR} does not exist;"
        f" put {filename} in a folder and set {ENV_VAR} or pass data.path"
    )


def missing_file(filename: str, tried: Path) -> FileNotFoundError:
    """The one-line error for a data file that is not where it was looked for."""
    return FileNotFoundError(
        f"{filename} not found at {tried}; put it there, set {ENV_VAR} or pass data.path"
    )


def locate(path: str | os.PathLike | None, filename: str,
           folder_ok: Callable[[Path], bool] | None = None) -> Path:
    """The file (or folder) to read for a data set whose default file is `filename`.

    path: a file (returned as is), a folder (returns folder/filename, or the folder itself when
    folder_ok(folder) says it holds another accepted layout), or None (the default data folder).
    """
    base = default_data_dir(filename) if path is None else Path(path).expanduser()
    if base.is_dir():
        candidate = base / filename
        if candidate.is_file():
            return verify_checksum(candidate)
        if folder_ok is not None and folder_ok(base):
            return base
        raise missing_file(filename, candidate)
    if base.is_file():
        return verify_checksum(base)
    raise missing_file(filename, base)


CHECKSUM_FILE = "SHA256SUMS"
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files already checked in this process


def verify_checksum(path: Path) -> Path:
    """path, after checking it against the SHA256SUMS file of its folder (`sha256sum` format) when that file
    exists and lists it; raises ValueError naming the file when its checksum differs."""
    sums = path.parent / CHECKSUM_FILE
    if not sums.is_file():
        return path
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return path
    expected = None
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == path.name:
            expected = parts[0].lower()
    if expected is None:
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"{path} differs from its checksum in {sums} (sha256 {digest.hexdigest()[:12]}..., expected "
            f"{expected[:12]}...): the file is damaged or another version; copy it again"
        )
    _verified.add(key)
    return path


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz file; a missing key raises KeyError naming the file and the key, a damaged
    file ValueError."""
    try:
        with np.load(path) as f:
            absent = [k for k in keys if k not in f.files]
            if absent:
                raise KeyError(f"{path} lacks array(s) {absent}; it holds {f.files}")
            return {k: f[k] for k in keys}
    except (zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path} is damaged: not a readable .npz ({err})") from None


def to_unit(x: np.ndarray, scale: float) -> np.ndarray:
    """uint8-style values x / scale as float32."""
    return np.asarray(x, np.float32) / np.float32(scale)


def cap(x: np.ndarray, limit: int | None) -> np.ndarray:
    """The first `limit` rows of x (all of them when limit is None)."""
    return x if limit is None else x[:limit]


def tfds_source(name: str, split: str, data_dir: str | None):
    """One split of a TFDS set the user has already prepared, as a random-access source of numpy examples
    (`source[i]` -> dict, `len(source)`); never downloads and needs no TensorFlow.

    Reads <data_dir or $TFDS_DATA_DIR or ~/tensorflow_datasets>/<name>/<latest version>/ through TFDS's
    array-record data source (tfds.builder_from_directory(...).as_data_source), so the set must have been
    prepared with `tfds build <name> --file_format=array_record`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("data.source='tfds' needs tensorflow-datasets and array_record: pip install 'apd[tfds]'"
                          ) from None
    root = Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser() / name
    versions = sorted((d for d in root.glob("*") if (d / "dataset_info.json").is_file()),
                      key=lambda d: tuple(int(v) if v.isdigit() else 0 for v in d.name.split(".")))
    if not versions:
        raise FileNotFoundError(
            f"TFDS data set {name!r} is not prepared in {root.parent}; prepare it on a connected machine with "
            f"`tfds build {name} --file_format=array_record --data_dir=DIR` and pass data.tfds_dir=DIR, or use "
            "data.source='file'"
        )
    builder = tfds.builder_from_directory(str(versions[-1]))
    if str(getattr(builder.info.file_format, "value", builder.info.file_format)) != "array_record":
        raise ValueError(f"TFDS data set {name!r} in {versions[-1]} is stored as {builder.info.file_format}; reading "
                         f"it without TensorFlow needs array_record: `tfds build {name} --file_format=array_record`")
    return builder.as_data_source(split=split)


GEOMETRY_FIELDS = ("vertices", "faces", "lat", "lon", "grid_shape")


def save_geometry(path, dataset) -> str:
    """Write what a figure of the data set's signals needs (kind, signal_shape, mesh, grid), no signals."""
    arrays = {"kind": np.array(dataset.kind), "signal_shape": np.array(dataset.signal_shape, np.int64)}
    arrays.update({f: np.asarray(getattr(dataset, f)) for f in GEOMETRY_FIELDS if getattr(dataset, f) is not None})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)
    return os.fspath(path)


def load_geometry(path) -> Dataset:
    """The geometry written by save_geometry, as a Dataset with empty splits (for the figure functions)."""
    with np.load(path) as f:
        shape = tuple(int(v) for v in f["signal_shape"])
        fields = {k: f[k] for k in GEOMETRY_FIELDS if k in f.files}
        kind = str(f["kind"])
    if "grid_shape" in fields:
        fields["grid_shape"] = tuple(int(v) for v in fields["grid_shape"])
    empty = np.zeros((0,) + shape, np.float32)
    return Dataset(name="geometry", train=empty, val=empty, test=empty, signal_shape=shape, kind=kind,
                   split={"source": os.fspath(path)}, **fields)


class SignalsWithheld:
    """A data set's geometry (name, signal_shape, kind, vertices, faces, lat, lon, grid_shape) with its signals
    withheld: reading train, val or test raises RuntimeError(reason). For stages that may use no clean signal."""

    def __init__(self, dataset, reason: str):
        self._dataset, self._reason = dataset, reason

    def __getattr__(self, name):
        if name in ("train", "val", "test", "labels"):
            raise RuntimeError(f"{self._reason}: the clean signals ({name}) are withheld")
        return getattr(self._dataset, name)
