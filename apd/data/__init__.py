"""Data sets as numpy arrays in [0,1] with a fixed, recorded split.

    load_dataset(cfg) -> Dataset

cfg is a ConfigDict (or dict-like with .get) with cfg.name one of DATASETS and the options of DATA_OPTIONS[name],
each optional: path (a file or the folder holding it; default: $APD_DATA_DIR, else ../shared/data beside the
repository), caps max_train / max_eval, source ('file' or 'tfds'), ... `data_config(name)` gives them all with
their defaults, so every one can be set from the command line (--config.data.path=...). Nothing here reaches
the network. See each module's docstring for its layout, split and options.
"""
from __future__ import annotations

from apd.data.base import Dataset, default_data_dir, locate
from apd.data.bunny import load_bunny_mnist, load_mesh, paint, project_vertices
from apd.data.digits import load_digits, load_mnist
from apd.data.era5 import grid_faces, load_era5_sphere, normalise, sphere_vertices
from apd.data.faces import celeba_partition, load_celeba32, load_ffhq32

__all__ = [
    "DATASETS",
    "DATA_OPTIONS",
    "Dataset",
    "celeba_partition",
    "data_config",
    "default_data_dir",
    "grid_faces",
    "load_dataset",
    "load_mesh",
    "locate",
    "normalise",
    "paint",
    "project_vertices",
    "sphere_vertices",
]

DATASETS = {
    "digits": load_digits,
    "mnist": load_mnist,
    "celeba32": load_celeba32,
    "ffhq32": load_ffhq32,
    "bunny_mnist": load_bunny_mnist,
    "era5_sphere": load_era5_sphere,
}


# Every option of each data set: (type, default); None defaults mean "the loader's default" (see its module).
_CAPS = {"max_train": (int, None), "max_eval": (int, None)}
_TFDS = {"source": (str, "file"), "tfds_dir": (str, None)}
DATA_OPTIONS = {
    "digits": {"path": (str, None), **_CAPS},
    "mnist": {"path": (str, None), **_TFDS, **_CAPS},
    "celeba32": {"path": (str, None), **_TFDS, **_CAPS},
    "ffhq32": {"path": (str, None), "max_eval": (int, None)},
    "bunny_mnist": {"path": (str, None), "mnist_path": (str, None), **_TFDS, "max_train": (int, 20000),
                    "max_eval": (int, None), "vertex_order": (str, "file")},
    "era5_sphere": {"path": (str, None), "include_pressure_levels": (bool, False), **_CAPS},
}
SOURCES = ("file", "tfds")


def data_config(name: str, **overrides):
    """ConfigDict(name=name, every option of DATA_OPTIONS[name] at its default, then overrides); options without a
    default are typed placeholders, so --config.data.<option>=... works on the command line."""
    from ml_collections import ConfigDict, config_dict

    if name not in DATA_OPTIONS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    unknown = sorted(set(overrides) - set(DATA_OPTIONS[name]))
    if unknown:
        raise ValueError(f"{unknown} are not options of {name}; options: {', '.join(DATA_OPTIONS[name])}")
    fields = {k: config_dict.placeholder(t) if d is None else d for k, (t, d) in DATA_OPTIONS[name].items()}
    config = ConfigDict({"name": name, **fields})
    config.update(overrides)
    return config


def load_dataset(cfg) -> Dataset:
    """The data set named cfg.name, with train/val/test float32 arrays (N, *signal_shape) in [0,1]."""
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name](cfg)
