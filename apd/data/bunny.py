"""Bunny-MNIST: MNIST digits painted onto the vertices of the Stanford bunny.

Projection (fixed, one per mesh): orthographic projection of every vertex onto the x-y plane, i.e. the
view from +z looking down -z with +y up (the scan's own viewing direction: the bunny in profile, facing
-x). The projected bounding box is scaled uniformly (aspect kept) so that its longer side spans the
28x28 image between pixel centres MARGIN and 27 - MARGIN, and centred along its shorter side; image
column grows with x, image row grows with -y (row 0 is the top). Each vertex takes the bilinear
interpolation of the digit image (values / 255) at its (row, col), so a vertex signal is (V,1) in [0,1].
Vertices on the front and the back of the bunny that project to one point take the same value.

Painting is linear in the image: signals (N,V) = images (N,784) @ W (784,V), with W the bilinear weights.
Splits follow MNIST's own: train = the first 55,000 training digits (capped by cfg.max_train, default
20,000, since all 70,000 digits x 1,889 vertices are 530 MB as float32), val = the last 5,000 training
digits, test = MNIST's test digits (cfg.max_eval caps val and test).
"""
from __future__ import annotations

import numpy as np

from apd.data.base import Dataset, locate
from apd.data.digits import PARTS, mnist_arrays
from apd.data.mesh_order import ORDERS, consecutive_edge_fraction, reorder_mesh, walk_order

MESH_FILE = "bun_zipper_res3.ply"
IMAGE_SIZE = 28
MARGIN = 2.0  # pixels left free on each side of the longer axis
DEFAULT_MAX_TRAIN = 20000


def project_vertices(vertices: np.ndarray, image_size: int = IMAGE_SIZE, margin: float = MARGIN) -> np.ndarray:
    """Continuous pixel coordinates (V,2) = (row, col) of vertices (V,3) under the view from +z."""
    xy = np.asarray(vertices, np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = image_size - 1 - 2.0 * margin
    scale = span / np.max(hi - lo)
    offset = margin + 0.5 * (span - (hi - lo) * scale)  # centres the shorter side; (x, y) order
    col = offset[0] + (xy[:, 0] - lo[0]) * scale
    row = offset[1] + (hi[1] - xy[:, 1]) * scale
    return np.stack([row, col], axis=1)


def bilinear_weights(coords: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation as a matrix W (H*W, V): image.reshape(-1) @ W samples at coords (V,2)."""
    height, width = image_shape
    row = np.clip(coords[:, 0], 0, height - 1)
    col = np.clip(coords[:, 1], 0, width - 1)
    r0 = np.minimum(np.floor(row).astype(np.int64), height - 2)
    c0 = np.minimum(np.floor(col).astype(np.int64), width - 2)
    fr, fc = row - r0, col - c0
    weights = np.zeros((height * width, len(coords)), np.float64)
    vertex = np.arange(len(coords))
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        np.add.at(weights, ((r0 + dr) * width + c0 + dc, vertex), w)
    return weights.astype(np.float32)


def paint(images: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Vertex signals (N,V,1) in [0,1] from images (N,28,28) in [0,1] and vertices (V,3)."""
    images = np.asarray(images, np.float32)
    weights = bilinear_weights(project_vertices(vertices, images.shape[1]), images.shape[1:3])
    signals = images.reshape(len(images), -1) @ weights
    return np.clip(signals, 0.0, 1.0)[..., None]


def load_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V,3) float32 and faces (F,3) int32 of a mesh file (PLY, OBJ, OFF, ... as trimesh reads them;
    polygons are split into triangles), read as stored. ValueError (one line) for files with no triangles."""
    import trimesh

    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as err:  # trimesh raises many types for unreadable files
        raise ValueError(f"{path}: not a readable mesh file ({err})") from err
    faces = getattr(mesh, "faces", None)
    if len(mesh.vertices) == 0 or faces is None or len(faces) == 0 or faces.shape[1:] != (3,):
        raise ValueError(f"{path}: expected a triangle mesh, got {len(mesh.vertices)} vertices and"
                         f" {0 if faces is None else len(faces)} triangles")
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32)


def load_bunny_mnist(cfg) -> Dataset:
    """Bunny-MNIST. cfg.path: the mesh (default bun_zipper_res3.ply); cfg.mnist_path: mnist.npz (default
    the data folder); cfg.source 'file' | 'tfds' for MNIST; caps cfg.max_train (default 20,000), cfg.max_eval;
    cfg.vertex_order 'file' (as stored, the default) | 'walk' (apd.data.mesh_order.walk_order: consecutive
    indices are mesh neighbours, for 1-D networks). Vertices and faces are returned in that order."""
    mesh_path = locate(cfg.get("path"), MESH_FILE)
    vertices, faces = load_mesh(mesh_path)
    vertex_order = cfg.get("vertex_order") or "file"
    if vertex_order not in ORDERS:
        raise ValueError(f"data.vertex_order must be one of {ORDERS}, got {vertex_order!r}")
    edge_fraction_file = consecutive_edge_fraction(faces, len(vertices))
    if vertex_order == "walk":
        vertices, faces = reorder_mesh(vertices, faces, walk_order(vertices, faces))
    images, labels, split = mnist_arrays(cfg, path_key="mnist_path", default_max_train=DEFAULT_MAX_TRAIN)
    signals = {p: paint(images[p].astype(np.float32) / 255.0, vertices) for p in PARTS}
    split = {**split, "mesh": str(mesh_path), "vertex_order": vertex_order,
             "consecutive_edge_fraction": {"file": edge_fraction_file,
                                           vertex_order: consecutive_edge_fraction(faces, len(vertices))},
             "projection": f"orthographic onto x-y (view from +z, +y up), {IMAGE_SIZE}x{IMAGE_SIZE},"
                           f" margin {MARGIN} px, bilinear"}
    return Dataset(
        name="bunny_mnist",
        **signals,
        signal_shape=(len(vertices), 1),
        kind="mesh",
        split=split,
        vertices=vertices,
        faces=faces,
        labels=labels,
    )
