"""Data sets as numpy arrays in [0,1] with a fixed, recorded split.

    load_dataset(cfg) -> Dataset

cfg is a ConfigDict (or dict-like with .get) with cfg.name one of DATASETS and optional cfg.path (a file
or the folder holding it; default: $APD_DATA_DIR, else ../shared/data beside the repository). Nothing here
reaches the network. See each module's docstring for its layout, split and options.
"""
from __future__ import annotations

from apd.data.base import Dataset, default_data_dir, locate
from apd.data.bunny import load_bunny_mnist, load_mesh, paint, project_vertices
from apd.data.digits import load_digits, load_mnist
from apd.data.era5 import grid_faces, load_era5_sphere, normalise, sphere_vertices
from apd.data.faces import celeba_partition, load_celeba32, load_ffhq32

__all__ = [
    "DATASETS",
    "Dataset",
    "celeba_partition",
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


def load_dataset(cfg) -> Dataset:
    """The data set named cfg.name, with train/val/test float32 arrays (N, *signal_shape) in [0,1]."""
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name](cfg)
