"""Handwritten digits: scikit-learn's bundled 8x8 digits (no files needed) and MNIST 28x28.

digits: sklearn.datasets.load_digits (1,797 images, values 0..16, scaled by 1/16), shape (8,8,1), split
    by a fixed permutation (seed 0) into 1,397 train / 200 val / 200 test.
mnist: mnist.npz in the keras layout (x_train (60000,28,28) uint8, y_train, x_test, y_test), or TFDS
    'mnist' already prepared by the user (cfg.source == 'tfds', never downloaded). Values / 255, shape
    (28,28,1); val is the last 5,000 of MNIST's training set, test is its test set.
"""
from __future__ import annotations

import numpy as np

from apd.data.base import Dataset, cap, load_npz, locate, tfds_numpy, to_unit

DIGITS_SEED = 0
DIGITS_SIZES = {"train": 1397, "val": 200, "test": 200}
MNIST_FILE = "mnist.npz"
MNIST_VAL = 5000
PARTS = ("train", "val", "test")


def load_digits(cfg) -> Dataset:
    """scikit-learn's 8x8 digits; needs no files. Optional cfg.max_train caps the train split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = to_unit(bunch.images, 16.0)[..., None]
    labels = bunch.target.astype(np.int32)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(images))
    stops = np.cumsum([DIGITS_SIZES[p] for p in PARTS])
    index = dict(zip(PARTS, np.split(order, stops[:-1])))
    index["train"] = cap(index["train"], cfg.get("max_train"))
    return Dataset(
        name="digits",
        **{p: images[index[p]] for p in PARTS},
        signal_shape=(8, 8, 1),
        kind="image",
        split={
            "source": "sklearn.datasets.load_digits",
            "rule": f"permutation with numpy default_rng({DIGITS_SEED}), then train/val/test in that order",
            "seed": DIGITS_SEED,
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
    n_train = len(x_train) - MNIST_VAL
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
    """One prepared TFDS mnist split as (N,28,28) uint8 images and (N,) labels."""
    data = tfds_numpy("mnist", split, data_dir, batch_size=-1)
    return data["image"][..., 0], data["label"]
