"""The class shapes as unit-area outlines: polygon templates and the signed distance from an outline."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: the class vocabulary, most distinctive shapes first; class ``k`` is ``SHAPE_NAMES[k]``
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "hexagon")


class _Polygon(NamedTuple):
    """A polygon star-shaped about the origin (the shape's centre), scaled to unit area.

    ``angles`` (n,): vertex polar angles, sorted in [0, 2pi); ``vertices`` (n, 2); ``edges`` (n, 2): the
    vector from each vertex to the next; ``normals`` (n, 2): the edges' outward unit normals;
    ``offsets`` (n,): the distances of the edges' lines from the origin.
    """

    angles: np.ndarray
    vertices: np.ndarray
    edges: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray


def _polygon(angles: np.ndarray, radii: np.ndarray) -> _Polygon:
    """The unit-area polygon with vertices at polar `angles` (rad) and proportional to `radii`."""
    angles = np.mod(angles, 2 * np.pi)
    order = np.argsort(angles)
    angles, radii = angles[order], radii[order]
    x, y = radii * np.cos(angles), radii * np.sin(angles)
    area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    vertices = np.stack([x, y], axis=1) / np.sqrt(area)
    edges = np.roll(vertices, -1, axis=0) - vertices
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1, keepdims=True)
    offsets = np.sum(normals * vertices, axis=1)
    return _Polygon(*(a.astype(np.float32) for a in (angles, vertices, edges, normals, offsets)))


def _regular(n: int, phase: float) -> _Polygon:
    return _polygon(phase + 2 * np.pi * np.arange(n) / n, np.ones(n))


def _star(points: int = 5, inner: float = 0.45) -> _Polygon:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return _polygon(np.pi / 2 + np.pi * np.arange(2 * points) / points, radii)


def _cross(half_width: float = 0.33) -> _Polygon:
    w = half_width
    arm = np.array([[1, -w], [1, w], [w, w]])  # one arm's outer corners and the inner corner after it
    rot = [np.array([[c, -s], [s, c]]) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1))]
    xy = np.concatenate([arm @ r.T for r in rot])
    return _polygon(np.arctan2(xy[:, 1], xy[:, 0]), np.hypot(xy[:, 0], xy[:, 1]))


#: unit-area polygon templates; the circle is handled analytically
_POLYGONS: dict[str, _Polygon] = {
    "square": _regular(4, np.pi / 4),
    "triangle": _regular(3, np.pi / 2),
    "cross": _cross(),
    "star": _star(),
    "hexagon": _regular(6, 0.0),
}
_CIRCLE_RADIUS = 1 / np.sqrt(np.pi)  # unit area
#: largest distance of a unit-area shape's points from its centre
CIRCUMRADIUS: dict[str, float] = {
    "circle": _CIRCLE_RADIUS,
    **{k: float(np.hypot(*p.vertices.T).max()) for k, p in _POLYGONS.items()},
}


def signed_distance(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance of points (u, v) (broadcastable arrays) from the outline of the unit-area shape
    `name` centred at the origin; negative inside."""
    if name == "circle":
        return np.sqrt(u * u + v * v) - _CIRCLE_RADIUS
    poly = _POLYGONS[name]
    # inside iff on the inner side of the edge that the ray from the centre through the point crosses
    theta = np.mod(np.arctan2(v, u), 2 * np.pi)
    k = (np.searchsorted(poly.angles, theta, side="right") - 1) % len(poly.angles)
    outside = u * poly.normals[k, 0] + v * poly.normals[k, 1] > poly.offsets[k]
    # distance: to the nearest edge segment
    du, dv = u[..., None] - poly.vertices[:, 0], v[..., None] - poly.vertices[:, 1]
    (eu, ev), length2 = poly.edges.T, np.sum(poly.edges**2, axis=1)
    t = np.clip((du * eu + dv * ev) / length2, 0, 1)
    dist = np.sqrt(np.min((du - t * eu) ** 2 + (dv - t * ev) ** 2, axis=-1))
    return np.where(outside, dist, -dist)


