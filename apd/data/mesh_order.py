"""Vertex orders for 1-D networks on meshes: a sequence in which neighbours on the surface sit side by side.

A 1-D convolution over vertex signals (V,C) sees the vertices in index order, and a scanned mesh's stored
order is only weakly local (on the Stanford bunny about a quarter of consecutive indices share an edge).
`walk_order` builds a path through the mesh graph: from the vertex with the lowest (x, y, z), step to the
unvisited neighbour that has the fewest unvisited neighbours itself (Warnsdorff's rule, which leaves few
vertices stranded); when every neighbour is visited, jump to the nearest unvisited vertex in space. Deterministic
for a given mesh (ties go to the lowest index).
"""
from __future__ import annotations

import numpy as np

ORDERS = ("file", "walk")


def edge_sets(faces: np.ndarray, num_vertices: int) -> list[set[int]]:
    """Neighbours of each vertex (V sets) from triangle faces (F,3)."""
    neighbours: list[set[int]] = [set() for _ in range(num_vertices)]
    for a, b in ((0, 1), (1, 2), (2, 0)):
        for i, j in zip(faces[:, a].tolist(), faces[:, b].tolist()):
            if i != j:
                neighbours[i].add(j)
                neighbours[j].add(i)
    return neighbours


def consecutive_edge_fraction(faces: np.ndarray, num_vertices: int, order: np.ndarray | None = None) -> float:
    """Fraction of the V-1 consecutive pairs of `order` (default: index order) that are mesh edges."""
    order = np.arange(num_vertices) if order is None else np.asarray(order)
    neighbours = edge_sets(np.asarray(faces), num_vertices)
    hits = sum(int(b) in neighbours[int(a)] for a, b in zip(order[:-1], order[1:]))
    return hits / max(num_vertices - 1, 1)


def walk_order(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """A permutation (V,) of vertex indices: position k of the sequence holds vertex order[k]."""
    vertices = np.asarray(vertices, np.float64)
    num_vertices = len(vertices)
    neighbours = [sorted(s) for s in edge_sets(np.asarray(faces), num_vertices)]
    unvisited_degree = np.array([len(n) for n in neighbours])
    visited = np.zeros(num_vertices, bool)
    order = np.empty(num_vertices, np.int64)
    current = int(np.lexsort(vertices.T[::-1])[0])
    for k in range(num_vertices):
        order[k] = current
        visited[current] = True
        for j in neighbours[current]:
            unvisited_degree[j] -= 1
        if k == num_vertices - 1:
            break
        candidates = [j for j in neighbours[current] if not visited[j]]
        if candidates:
            current = min(candidates, key=lambda j: (unvisited_degree[j], j))
        else:
            remaining = np.flatnonzero(~visited)
            distance = np.sum((vertices[remaining] - vertices[current]) ** 2, axis=1)
            current = int(remaining[np.argmin(distance)])
    return order


def reorder_mesh(vertices: np.ndarray, faces: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same mesh with vertex k of the result = vertex order[k] of the input: (vertices (V,3), faces (F,3))."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return np.asarray(vertices)[order], inverse[np.asarray(faces)].astype(np.asarray(faces).dtype)
