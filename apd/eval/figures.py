"""Figures of signals as PNG files: image grids, mesh renders, latitude-longitude maps, sphere renders.

Every figure is a grid with one labelled row per entry of `rows`, a list of (label, signals) pairs with
signals (N, *S) in [0, 1] (truth, measurement, samples, posterior mean, std, baselines, ...); row r shows
its N signals in columns. Rows whose label is listed in `scaled` (default: "std") are drawn with a colour
map scaled from 0 to that row's maximum, which is written under the label; other rows are clipped to
[0, 1]. The pixel size is exact: width (LABEL_INCHES + ncols * cell width) * DPI, height nrows *
CELL_INCHES * DPI; lat-lon cells are n_lon / n_lat times as wide as high, rounded to whole
pixels. Each function writes the file (creating its folder) and returns its path. Calibration curves
(coverage against interval level, one line per method) are a plain line plot.
"""
from __future__ import annotations

import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

DPI = 100
CELL_INCHES = 1.0  # height of every cell; images and meshes use square cells
LABEL_INCHES = 1.0  # width of the row-label column
LABEL_CHARS = 14  # longer label lines wrap so that they fit that column at font size 8
CELL_MARGIN = 0.03  # blank fraction of a cell's width and height on each side
SCALED_CMAP = "viridis"
BUNNY_FRONT_VIEW = (90.0, -90.0)  # (elev, azim): looking down -z from +z, x to the right, y up


def _as_float(signals) -> np.ndarray:
    return np.asarray(signals, dtype=np.float64)


def _row_range(label: str, values: np.ndarray, scaled) -> tuple[float, float, str]:
    """(vmin, vmax, shown label) of one row."""
    if label in scaled:
        vmax = float(values.max()) if values.size else 1.0
        return 0.0, max(vmax, 1e-12), f"{label}\n(0 to {vmax:.3g})"
    return 0.0, 1.0, label


def _grid(nrows: int, ncols: int, cell_width: float, labels: list[str], projection: str | None = None):
    """A figure of nrows x ncols axes of cell_width x CELL_INCHES inches after a label column."""
    if nrows == 0 or ncols == 0:
        raise ValueError("a figure needs at least one row with at least one signal")
    width = LABEL_INCHES + ncols * cell_width
    height = nrows * CELL_INCHES
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    axes = []
    for r, label in enumerate(labels):
        bottom = 1.0 - (r + 1) / nrows
        wrapped = "\n".join(textwrap.fill(line, LABEL_CHARS) for line in label.split("\n"))
        fig.text(0.5 * LABEL_INCHES / width, bottom + 0.5 / nrows, wrapped, ha="center", va="center", fontsize=8)
        row = []
        for c in range(ncols):
            left = (LABEL_INCHES + (c + CELL_MARGIN) * cell_width) / width
            box = (left, bottom + CELL_MARGIN / nrows, (1 - 2 * CELL_MARGIN) * cell_width / width,
                   (1 - 2 * CELL_MARGIN) / nrows)
            ax = fig.add_axes(box, projection=projection)
            ax.set_axis_off()
            row.append(ax)
        axes.append(row)
    return fig, axes


def _save(fig, path) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _vertex_rows(rows) -> list[tuple[str, np.ndarray]]:
    """Check vertex-signal rows (label, (N, V, 1)) and drop the channel axis: (label, (N, V))."""
    out = []
    for label, signals in rows:
        signals = _as_float(signals)
        if signals.ndim != 3 or signals.shape[-1] != 1:
            raise ValueError(f"row {label!r}: expected one-channel vertex signals (N, V, 1), got {signals.shape}")
        out.append((label, signals[..., 0]))
    return out


def save_image_grid(path, rows, scaled=("std",)) -> str:
    """Grid of images, rows [(label, images (N, H, W, C))] with C = 1 (gray) or 3 (RGB); returns path.

    Scaled rows show the channel mean with a colour map from 0 to the row's maximum.
    """
    rows = [(label, _as_float(images)) for label, images in rows]
    for label, images in rows:
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"row {label!r}: expected images (N, H, W, 1 or 3), got {images.shape}")
    ranges = [_row_range(label, images, scaled) for label, images in rows]
    ncols = max(len(images) for _, images in rows)
    fig, axes = _grid(len(rows), ncols, CELL_INCHES, [shown for _, _, shown in ranges])
    for (label, images), (vmin, vmax, _), row_axes in zip(rows, ranges, axes):
        for image, ax in zip(images, row_axes):
            if label in scaled:
                ax.imshow(image.mean(-1), cmap=SCALED_CMAP, vmin=vmin, vmax=vmax)
            elif image.shape[-1] == 1:
                ax.imshow(np.clip(image[..., 0], 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.clip(image, 0.0, 1.0))
    return _save(fig, path)


def save_mesh_renders(path, vertices, faces, rows, view=BUNNY_FRONT_VIEW, cmap="gray", scaled=("std",)) -> str:
    """Orthographic renders of vertex signals on a mesh; returns path.

    vertices (V, 3); faces (F, 3) vertex indices, each face coloured by the mean of its three vertex values
    (painter's order, no lighting), or None to draw the vertices as points; rows [(label, (N, V, 1))];
    view = (elev, azim) in degrees as in matplotlib. The default looks from +z with x right and y up, so a
    signal painted by projecting vertices orthographically onto the x-y plane reads as the image did.
    """
    vertices = _as_float(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}")
    rows = _vertex_rows(rows)
    for label, signals in rows:
        if signals.shape[1] != len(vertices):
            raise ValueError(f"row {label!r}: {signals.shape[1]} vertex values for {len(vertices)} vertices")
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3) vertex indices, got {faces.shape}")
    colour_map = plt.get_cmap(cmap)
    scaled_map = plt.get_cmap(SCALED_CMAP)
    low, high = vertices.min(0), vertices.max(0)
    centre, half = (low + high) / 2, np.maximum((high - low).max() / 2, 1e-12)
    ranges = [_row_range(label, signals, scaled) for label, signals in rows]
    ncols = max(len(signals) for _, signals in rows)
    fig, axes = _grid(len(rows), ncols, CELL_INCHES, [shown for _, _, shown in ranges], projection="3d")
    for (label, signals), (vmin, vmax, _), row_axes in zip(rows, ranges, axes):
        row_map = scaled_map if label in scaled else colour_map
        for signal, ax in zip(signals, row_axes):
            ax.set_proj_type("ortho")
            ax.view_init(elev=view[0], azim=view[1])
            ax.set_box_aspect((1.0, 1.0, 1.0), zoom=1.35)
            for set_lim, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
                set_lim(c - half, c + half)
            values = np.clip((signal - vmin) / (vmax - vmin), 0.0, 1.0)
            if faces is None:
                ax.scatter(*vertices.T, c=row_map(values), s=2.0, depthshade=False, linewidths=0)
            else:
                colours = row_map(values[faces].mean(axis=1))
                ax.add_collection3d(Poly3DCollection(vertices[faces], facecolors=colours, linewidths=0))
    return _save(fig, path)


def _grid_order(grid_shape, lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """Row and column permutations that put north at the top and longitude increasing to the right."""
    n_lat, n_lon = grid_shape
    rows = np.arange(n_lat) if lat is None else np.argsort(-np.asarray(lat), kind="stable")
    cols = np.arange(n_lon) if lon is None else np.argsort(np.asarray(lon), kind="stable")
    if len(rows) != n_lat or len(cols) != n_lon:
        raise ValueError(f"lat ({len(rows)}) and lon ({len(cols)}) must match grid_shape {grid_shape}")
    return rows, cols


def save_latlon_maps(path, rows, grid_shape=(46, 90), lat=None, lon=None, cmap="coolwarm", scaled=("std",)) -> str:
    """Maps of vertex signals on a latitude-longitude grid, north up; returns path.

    rows [(label, (N, V, 1))] with V = n_lat * n_lon, vertex index = lat_index * n_lon + lon_index;
    lat (n_lat,), lon (n_lon,) in degrees give the grid's order (default: row 0 is the north pole,
    longitude increasing), and the map is drawn with latitude decreasing downwards.
    """
    n_lat, n_lon = grid_shape
    rows = _vertex_rows(rows)
    for label, signals in rows:
        if signals.shape[1] != n_lat * n_lon:
            raise ValueError(f"row {label!r}: {signals.shape[1]} vertices do not fill grid {grid_shape}")
    row_order, col_order = _grid_order(grid_shape, lat, lon)
    ranges = [_row_range(label, signals, scaled) for label, signals in rows]
    ncols = max(len(signals) for _, signals in rows)
    cell_width = round(CELL_INCHES * DPI * n_lon / n_lat) / DPI  # whole pixels
    fig, axes = _grid(len(rows), ncols, cell_width, [shown for _, _, shown in ranges])
    for (label, signals), (vmin, vmax, _), row_axes in zip(rows, ranges, axes):
        row_map = SCALED_CMAP if label in scaled else cmap
        for signal, ax in zip(signals, row_axes):
            field = signal.reshape(n_lat, n_lon)[row_order][:, col_order]
            ax.imshow(field, cmap=row_map, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    return _save(fig, path)


def _latlon_faces(n_lat: int, n_lon: int) -> np.ndarray:
    """(2 (n_lat - 1) n_lon, 3) triangles joining neighbouring grid points, longitude wrapping around."""
    i, j = np.meshgrid(np.arange(n_lat - 1), np.arange(n_lon), indexing="ij")
    a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
    c, d = a + n_lon, b + n_lon
    return np.concatenate([np.stack([a, b, c], -1), np.stack([b, d, c], -1)]).reshape(-1, 3)


def save_sphere_renders(path, rows, lat, lon, view=(20.0, -60.0), cmap="coolwarm", scaled=("std",)) -> str:
    """Lat-lon grid signals rendered on the unit sphere (z towards the north pole); returns path.

    rows [(label, (N, n_lat * n_lon, 1))]; lat (n_lat,), lon (n_lon,) in degrees; vertex index =
    lat_index * n_lon + lon_index; view = (elev, azim) as in save_mesh_renders.
    """
    lat_rad, lon_rad = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    points = np.stack(
        [np.cos(lat_rad) * np.cos(lon_rad), np.cos(lat_rad) * np.sin(lon_rad), np.sin(lat_rad)], axis=-1
    ).reshape(-1, 3)
    faces = _latlon_faces(len(lat), len(lon))
    return save_mesh_renders(path, points, faces, rows, view=view, cmap=cmap, scaled=scaled)


def save_signal_figure(path, kind: str, rows, **geometry) -> str:
    """Dispatch on the signal kind: 'image' -> save_image_grid, 'mesh' -> save_mesh_renders (geometry:
    vertices, faces, view, ...), 'sphere' -> save_latlon_maps (geometry: grid_shape, lat, lon, ...)."""
    if kind == "image":
        return save_image_grid(path, rows, **geometry)
    if kind == "mesh":
        return save_mesh_renders(path, rows=rows, **geometry)
    if kind == "sphere":
        return save_latlon_maps(path, rows, **geometry)
    raise ValueError(f"unknown signal kind {kind!r}: expected 'image', 'mesh' or 'sphere'")


def save_dataset_figure(path, dataset, rows) -> str:
    """save_signal_figure with the geometry the figure of `dataset.kind` needs, taken from the dataset."""
    if dataset.kind == "mesh":
        geometry = {"vertices": dataset.vertices, "faces": dataset.faces}
    elif dataset.kind == "sphere":
        geometry = {"grid_shape": dataset.grid_shape, "lat": dataset.lat, "lon": dataset.lon}
    else:
        geometry = {}
    return save_signal_figure(path, dataset.kind, rows, **geometry)


def save_calibration_curves(path, levels, curves: dict[str, list[float]], title: str = "") -> str:
    """Coverage of central credible intervals against their level, one line per method, with the diagonal of
    a calibrated posterior. levels (L,) in (0, 1); curves: {label: coverage (L,)}."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for label, values in curves.items():
        ax.plot(levels, values, marker="o", markersize=3, linewidth=1.2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("interval level")
    ax.set_ylabel("fraction of truth entries inside")
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)
