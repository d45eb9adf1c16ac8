"""Handwritten digits: the 8x8 digits shipped with the package (no files needed) and MNIST 28x28.

digits: apd/data/digits_8x8.npz, the 1,797 images of the UCI "Optical Recognition of Handwritten Digits" set
    (CC BY 4.0) exactly as scikit-learn bundles them (sklearn.datasets.load_digits: 'images' uint8 0..16,
    'labels'), so no scikit-learn is needed; cfg.path reads another file of that layout. Values / 16, shape
    (8,8,1), split by a fixed permutation (seed 0) into 1,397 train / 200 val / 200 test.
mnist: mnist.npz in the keras layout (x_train (60000,28,28) uint8, y_train, x_test, y_test), or TFDS
    'mnist' already prepared by the user (cfg.source == 'tfds', never downloaded). Values / 255, shape
    (28,28,1); val is the last 5,000 of MNIST's training set (the last 1/12 of a smaller set), test is its
    test set. TFDS sets are read through array-record data sources, without TensorFlow (apd.data.base.tfds_source).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from apd.data.base import Dataset, cap, load_npz, locate, tfds_source, to_unit

DIGITS_FILE = Path(__file__).with_name("digits_8x8.npz")
DIGITS_SEED = 0
DIGITS_SIZES = {"train": 1397, "val": 200, "test": 200}
MNIST_FILE = "mnist.npz"
MNIST_VAL = 5000
PARTS = ("train", "val", "test")


def load_digits(cfg) -> Dataset:
    """The shipped 8x8 digits (or cfg.path in their layout); optional caps cfg.max_train (train rows) and
    cfg.max_eval (val and test rows each)."""
    path = Path(cfg.get("path") or DIGITS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"digits file {path} not found; data.path must be an .npz with 'images' (N,8,8) "
                                "in 0..16 and 'labels'")
    arrays = load_npz(path, ("images", "labels"))
    if arrays["images"].shape[1:] != (8, 8) or len(arrays["images"]) != sum(DIGITS_SIZES.values()):
        raise ValueError(f"{path}: digits images must be ({sum(DIGITS_SIZES.values())}, 8, 8), "
                         f"got {arrays['images'].shape}")
    images = to_unit(arrays["images"], 16.0)[..., None]
    labels = arrays["labels"].astype(np.int32)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(images))
    stops = np.cumsum([DIGITS_SIZES[p] for p in PARTS])
    index = dict(zip(PARTS, np.split(order, stops[:-1])))
    limits = {"train": cfg.get("max_train"), "val": cfg.get("max_eval"), "test": cfg.get("max_eval")}
    index = {p: cap(index[p], limits[p]) for p in PARTS}
    return Dataset(
        name="digits",
        **{p: images[index[p]] for p in PARTS},
        signal_shape=(8, 8, 1),
        kind="image",
        split={
            "source": str(path) if cfg.get("path") else "apd/data/digits_8x8.npz (sklearn.datasets.load_digits)",
            "rule": f"permutation with numpy default_rng({DIGITS_SEED}), then train/val/test in that order",
            "seed": DIGITS_SEED,
            "caps": limits,
            "sizes": {p: len(index[p]) for p in PARTS},
        },
        labels={p: labels[index[p]] for p in PARTS},
    )


def mnist_arrays(cfg, path_key: str = "path", default_max_train: int | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """MNIST as uint8 images {part: (N,28,28)}, int32 labels {part: (N,)} and the split record.

    Reads cfg[path_key] (mnist.npz or its folder) or TFDS when cfg.source == 'tfds'. Optional caps:
    cfg.max_train (train rows; default default_max_train), cfg.max_eval (val and test rows each); the
    first rows are kept.
    """
    source = cfg.get("source", "file")
    if source == "file":
        path = locate(cfg.get(path_key), MNIST_FILE)
        arrays = load_npz(path, ("x_train", "y_train", "x_test", "y_test"))
        x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        origin = str(path)
    elif source == "tfds":
        x_train, y_train = _tfds_mnist("train", cfg.get("tfds_dir"))
        x_test, y_test = _tfds_mnist("test", cfg.get("tfds_dir"))
        origin = "tfds:mnist"
    else:
        raise ValueError(f"mnist source must be 'file' or 'tfds', got {source!r}")
    if x_train.shape[1:] != (28, 28) or x_test.shape[1:] != (28, 28):
        raise ValueError(f"MNIST images must be (N,28,28), got {x_train.shape} and {x_test.shape}")
    n_train = len(x_train) - min(MNIST_VAL, len(x_train) // 12)  # 5,000 of MNIST's 60,000
    images = {"train": x_train[:n_train], "val": x_train[n_train:], "test": x_test}
    labels = {"train": y_train[:n_train], "val": y_train[n_train:], "test": y_test}
    limits = {"train": cfg.get("max_train", default_max_train), "val": cfg.get("max_eval"), "test": cfg.get("max_eval")}
    images = {p: cap(images[p], limits[p]) for p in PARTS}
    labels = {p: cap(labels[p], limits[p]).astype(np.int32) for p in PARTS}
    split = {
        "source": origin,
        "rule": f"train = MNIST train rows [0, {n_train}), val = rows [{n_train}, {len(x_train)}),"
                " test = MNIST test; caps keep the first rows",
        "caps": limits,
        "sizes": {p: len(images[p]) for p in PARTS},
    }
    return images, labels, split


def load_mnist(cfg) -> Dataset:
    """MNIST digits in [0,1], shape (28,28,1), with labels."""
    images, labels, split = mnist_arrays(cfg)
    return Dataset(
        name="mnist",
        **{p: to_unit(images[p], 255.0)[..., None] for p in PARTS},
        signal_shape=(28, 28, 1),
        kind="image",
        split=split,
        labels=labels,
    )


def _tfds_mnist(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One prepared TFDS mnist split as (N,28,28) uint8 images and (N,) labels, in the stored order."""
    source = tfds_source("mnist", split, data_dir)
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(e["image"], np.uint8).reshape(28, 28) for e in examples])
    return images, np.array([int(e["label"]) for e in examples], np.int64)
