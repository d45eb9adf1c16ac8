"""Faces at 32x32 RGB: CelebA (train/val/test by CelebA's official id ranges) and an FFHQ sample (test only).

celeba32: celeba_32x32.npz ('images' (N,32,32,3) uint8, 'celeba_id' (N,)), or a folder of CelebA images
    named by their id (000001.jpg ...), or TFDS 'celeb_a' already prepared (cfg.source == 'tfds').
    Images not already 32x32 are centre-cropped (140x140 for the aligned 178x218 images; the same
    fraction 140/178 of the width otherwise) and resized to 32x32 with Lanczos.
    Split: id <= 162770 train, 162771..182637 val, > 182637 test. When no test ids are present (the offline
    file), the validation range is split in two and split['test_is_val'] is True: its first VAL_TUNING_POOL
    images are val (prior sizing, flow validation, baseline tuning), the rest test (held out from all of it);
    a validation range of at most VAL_TUNING_POOL images is both val and test.
ffhq32: ffhq_32x32_sample.npz ('images' (N,32,32,3) uint8, 'ffhq_id'), or a folder of images (centre
    square crop, Lanczos to 32x32). For out-of-distribution checks only: everything is in test, train and
    val are empty (0,32,32,3).
Values / 255, float32, shape (32,32,3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from apd.data.base import Dataset, cap, load_npz, locate, tfds_source, to_unit

SIZE = 32
SHAPE = (SIZE, SIZE, 3)
CELEBA_FILE = "celeba_32x32.npz"
FFHQ_FILE = "ffhq_32x32_sample.npz"
CELEBA_TRAIN_LAST_ID = 162770
CELEBA_VAL_LAST_ID = 182637
CELEBA_CROP = (140, 178)  # crop side over image width for the aligned 178x218 CelebA images
PARTS = ("train", "val", "test")
VAL_TUNING_POOL = 256  # validation-range images kept for tuning when there is no test partition


def image_files(folder: Path) -> list[Path]:
    """The PIL-readable image files directly in folder, sorted by name."""
    from PIL import Image

    Image.init()
    suffixes = {s.lower() for s in Image.registered_extensions()}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def crop_resize(path: Path, crop_fraction: float) -> np.ndarray:
    """One image file as uint8 (32,32,3): unchanged if already 32x32, else a centred square crop of side
    min(round(crop_fraction * width), width, height) resized with Lanczos."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):
            image = _crop_resize(image, crop_fraction)
        return np.asarray(image, np.uint8)


def _crop_resize(image, crop_fraction: float):
    from PIL import Image

    w, h = image.size
    side = min(round(crop_fraction * w), w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def celeba_partition(ids: np.ndarray) -> np.ndarray:
    """CelebA's official partition of each image id: 0 train, 1 val, 2 test."""
    ids = np.asarray(ids)
    return (ids > CELEBA_TRAIN_LAST_ID).astype(np.int32) + (ids > CELEBA_VAL_LAST_ID)


def load_celeba32(cfg) -> Dataset:
    """CelebA 32x32; optional cfg.max_train (train rows) and cfg.max_eval (val and test rows each)."""
    source = cfg.get("source", "file")
    if source == "file":
        path = locate(cfg.get("path"), CELEBA_FILE, folder_ok=lambda d: bool(image_files(d)))
        images, ids = _celeba_folder(path) if path.is_dir() else _celeba_npz(path)
        part = celeba_partition(ids)
        images = {p: images[part == i] for i, p in enumerate(PARTS)}
        ids = {p: ids[part == i] for i, p in enumerate(PARTS)}
        origin = str(path)
    elif source == "tfds":
        images, ids = _celeba_tfds(cfg)
        origin = "tfds:celeb_a (train/validation/test)"
    else:
        raise ValueError(f"celeba32 source must be 'file' or 'tfds', got {source!r}")
    if len(images["val"]) == 0:
        raise ValueError(f"celeba32 from {origin} has no validation images (ids {CELEBA_TRAIN_LAST_ID + 1}.."
                         f"{CELEBA_VAL_LAST_ID})")
    test_is_val = len(images["test"]) == 0
    if test_is_val:
        cut = VAL_TUNING_POOL if len(images["val"]) > VAL_TUNING_POOL else 0
        images["test"], ids["test"] = images["val"][cut:], ids["val"][cut:]
        if cut:
            images["val"], ids["val"] = images["val"][:cut], ids["val"][:cut]
    limits = {"train": cfg.get("max_train"), "val": cfg.get("max_eval"), "test": cfg.get("max_eval")}
    images = {p: cap(images[p], limits[p]) for p in PARTS}
    return Dataset(
        name="celeba32",
        **{p: to_unit(images[p], 255.0) for p in PARTS},
        signal_shape=SHAPE,
        kind="image",
        split={
            "source": origin,
            "rule": f"CelebA official partition: id <= {CELEBA_TRAIN_LAST_ID} train,"
                    f" {CELEBA_TRAIN_LAST_ID + 1}..{CELEBA_VAL_LAST_ID} val, > {CELEBA_VAL_LAST_ID} test",
            "test_is_val": test_is_val,
            "caps": limits,
            "sizes": {p: len(images[p]) for p in PARTS},
            "id_ranges": {p: _id_range(cap(ids[p], limits[p])) for p in PARTS},
        },
    )


def load_ffhq32(cfg) -> Dataset:
    """FFHQ 32x32 sample, all in test (out-of-distribution checks); optional cap cfg.max_eval (test rows)."""
    path = locate(cfg.get("path"), FFHQ_FILE, folder_ok=lambda d: bool(image_files(d)))
    if path.is_dir():
        files = image_files(path)
        test = np.stack([crop_resize(f, 1.0) for f in files])
        ids = [f.name for f in files]
    else:
        arrays = load_npz(path, ("images", "ffhq_id"))
        test, ids = arrays["images"], arrays["ffhq_id"].tolist()
    _check_images(test, path)
    test, ids = cap(test, cfg.get("max_eval")), cap(ids, cfg.get("max_eval"))
    empty = np.zeros((0, *SHAPE), np.float32)
    return Dataset(
        name="ffhq32",
        train=empty,
        val=empty,
        test=to_unit(test, 255.0),
        signal_shape=SHAPE,
        kind="image",
        split={"source": str(path), "rule": "out-of-distribution set: all images in test",
               "sizes": {"train": 0, "val": 0, "test": len(test)}, "ids": ids},
    )


def _celeba_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_npz(path, ("images", "celeba_id"))
    _check_images(arrays["images"], path)
    return arrays["images"], arrays["celeba_id"].astype(np.int64)


def _celeba_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    files = image_files(folder)
    bad = [f.name for f in files if not f.stem.isdigit()]
    if bad:
        raise ValueError(f"CelebA image names must be their numeric id (000001.jpg); {folder} has {bad[:3]}")
    images = np.stack([crop_resize(f, CELEBA_CROP[0] / CELEBA_CROP[1]) for f in files])
    return images, np.array([int(f.stem) for f in files], np.int64)


def _celeba_tfds(cfg) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """TFDS celeb_a splits, cropped and resized like the files; caps applied while reading."""
    from PIL import Image

    limits = {"train": cfg.get("max_train"), "validation": cfg.get("max_eval"), "test": cfg.get("max_eval")}
    images, ids = {}, {}
    for part, tfds_split in zip(PARTS, ("train", "validation", "test")):
        rows = []
        source = tfds_source("celeb_a", tfds_split, cfg.get("tfds_dir"))
        count = len(source) if limits[tfds_split] is None else min(len(source), limits[tfds_split])
        for i in range(count):
            image = _crop_resize(Image.fromarray(np.asarray(source[i]["image"], np.uint8)), CELEBA_CROP[0] / CELEBA_CROP[1])
            rows.append(np.asarray(image, np.uint8))
        images[part] = np.stack(rows) if rows else np.zeros((0, *SHAPE), np.uint8)
        ids[part] = np.zeros((0,), np.int64)  # TFDS celeb_a carries no file ids
    return images, ids


def _check_images(images: np.ndarray, path: Path) -> None:
    if images.ndim != 4 or images.shape[1:] != SHAPE:
        raise ValueError(f"{path}: images must be (N,{SIZE},{SIZE},3), got {images.shape}")


def _id_range(ids: np.ndarray) -> list[int] | None:
    return [int(ids.min()), int(ids.max())] if len(ids) else None
