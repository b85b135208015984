"""The built-in offline dataset `shapes`: one class-defining shape per image on a cluttered background.

Every image holds exactly one filled object whose SHAPE is its class (``SHAPE_NAMES``); its colour,
position, size and rotation are random and independent of the class, and all classes have the same
area at a given size. It is drawn last, on top of a smooth random colour field and of distractors from
a separate vocabulary (thin line segments and small dots) whose number, colours and positions are
independent of the class too, so only the object's shape tells the class. Each image comes with the
object's pixel mask and its tight bounding box.

Image ``i`` of a split is rendered from ``np.random.default_rng([seed, split_id, i])`` alone, so the
data do not depend on the order or batch in which they are generated.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from infoflow.data.base import ImageDataModule
from infoflow.data.boxes import box_masks

#: the class vocabulary, most distinctive shapes first; class ``k`` is ``SHAPE_NAMES[k]``
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "hexagon")
#: split name -> split id in the per-image seed ``[seed, split_id, i]``
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
MIN_IMAGE_SIZE = 32

#: object size sqrt(area) as a fraction of the image side (uniform in this range)
OBJECT_SCALE = (0.2, 0.35)
#: distractors per 64x64 image (uniform integer in this range, scaled with the image area)
NUM_DISTRACTORS = (2, 5)
#: smallest RGB distance (in [0, 1] units) between the object colour and the background under it
MIN_CONTRAST = 0.6
#: std of the i.i.d. pixel noise added last, in [0, 1] units
NOISE_STD = 0.03
#: range of the background colour field values, in [0, 1] units
BACKGROUND_RANGE = (0.4, 0.6)


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
_CIRCUMRADIUS = {
    "circle": _CIRCLE_RADIUS,
    **{k: float(np.hypot(*p.vertices.T).max()) for k, p in _POLYGONS.items()},
}


def _signed_distance(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


@functools.lru_cache
def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights, corners aligned."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _pixel_centres(size: int) -> np.ndarray:
    """(size,) float32 pixel centre coordinates in px."""
    return np.arange(size, dtype=np.float32) + 0.5


def _render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(3, size, size) float32 in [0, 1]: a smooth random colour field under class-free distractors.

    The distractors are anti-aliased thin line segments and small dots with random colours, positions
    and sizes (defined for 64x64 and scaled with the image side).
    """
    unit, lo, hi = size / 64, *NUM_DISTRACTORS
    up = _upsample_matrix(4, size)
    image = (up @ rng.uniform(*BACKGROUND_RANGE, (3, 4, 4)) @ up.T).astype(np.float32)
    n = rng.integers(round(lo * unit**2), round(hi * unit**2) + 1)
    is_line = rng.integers(2, size=n)[:, None, None].astype(bool)  # else a dot
    colours = rng.uniform(0, 1, (n, 3, 1, 1)).astype(np.float32)
    cx, cy, extent, angle = rng.uniform(0, 1, (4, n, 1, 1)).astype(np.float32)
    # each distractor is the set of points within `half_width` px of a segment (a dot's has length 0)
    length = np.where(is_line, (0.15 + 0.35 * extent) * size, 0)
    half_width = np.where(is_line, 0.5, 1 + extent) * unit
    dx, dy = length * np.cos(2 * np.pi * angle), length * np.sin(2 * np.pi * angle)
    x = _pixel_centres(size)[None, None, :] - cx * size + dx / 2  # (n, 1, W), from the segment start
    y = _pixel_centres(size)[None, :, None] - cy * size + dy / 2  # (n, H, 1)
    t = np.clip((x * dx + y * dy) / np.maximum(length**2, 1e-6), 0, 1)
    x, y = x - t * dx, y - t * dy
    for alpha, colour in zip(np.clip(half_width + 0.5 - np.sqrt(x * x + y * y), 0, 1), colours, strict=True):
        image += alpha * (colour - image)
    return image


def _render_object(
    rng: np.random.Generator, background: np.ndarray, label: int
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The class object for `background` (3, H, W): its window (rows, cols), its anti-aliased coverage
    (h, w) in [0, 1] over that window (>= 0.5 exactly at the pixel centres inside the shape), and its
    colour (3, 1, 1), chosen to contrast with the background under it."""
    name, size = SHAPE_NAMES[label], background.shape[-1]
    side = rng.uniform(*OBJECT_SCALE) * size  # sqrt(area) in px
    radius = _CIRCUMRADIUS[name] * side
    cx, cy = rng.uniform(radius + 1, size - radius - 1, 2).tolist()  # fully inside, 1 px from the border
    angle = rng.uniform(0, 2 * np.pi)
    y0, x0 = max(int(cy - radius) - 1, 0), max(int(cx - radius) - 1, 0)
    rows, cols = slice(y0, int(cy + radius) + 2), slice(x0, int(cx + radius) + 2)
    u = (_pixel_centres(size)[None, cols] - cx) / side  # (1, w), unit-area frame before rotation
    v = (_pixel_centres(size)[rows, None] - cy) / side  # (h, 1)
    c, s = math.cos(angle), math.sin(angle)
    coverage = np.clip(0.5 - side * _signed_distance(name, c * u + s * v, c * v - s * u), 0, 1)
    under = np.tensordot(background[:, rows, cols], coverage / coverage.sum(), 2)
    colour = rng.uniform(0, 1, (16, 3))  # candidates; the first with enough contrast, else the best
    contrast = np.linalg.norm(colour - under, axis=1)
    ok = np.flatnonzero(contrast >= MIN_CONTRAST)
    best = colour[ok[0] if len(ok) else contrast.argmax()]
    return (rows, cols), coverage.astype(np.float32), best.astype(np.float32)[:, None, None]


def render_image(rng: np.random.Generator, label: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image of class `label`: (3, H, W) float32 RGB in [0, 1] and the object's (H, W) bool mask
    (the pixels whose centre lies inside the object)."""
    image = _render_background(rng, image_size)
    (rows, cols), coverage, colour = _render_object(rng, image, label)
    patch = image[:, rows, cols]
    patch += coverage * (colour - patch)
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[rows, cols] = coverage >= 0.5
    image += NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1), mask


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool non-empty masks -> (..., 4) float [x0, y0, x1, y1] tight boxes in px.

    Pixel (row r, col c) spans [c, c+1) x [r, r+1), so the box covers cols x0..x1-1 and rows y0..y1-1.
    """
    cols, rows = mask.any(dim=-2), mask.any(dim=-1)
    idx_w = torch.arange(mask.shape[-1], device=mask.device)
    idx_h = torch.arange(mask.shape[-2], device=mask.device)
    big = max(mask.shape[-2:])
    x0 = torch.where(cols, idx_w, big).amin(-1)
    x1 = torch.where(cols, idx_w, -1).amax(-1) + 1
    y0 = torch.where(rows, idx_h, big).amin(-1)
    y1 = torch.where(rows, idx_h, -1).amax(-1) + 1
    return torch.stack([x0, y0, x1, y1], dim=-1).float()


def box_to_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 4) [x0, y0, x1, y1] boxes in px -> (..., H, W) bool filled box masks."""
    return box_masks(box, (height, width))


def render_split(
    split: str, num_images: int, image_size: int, num_classes: int, seed: int
) -> dict[str, torch.Tensor]:
    """Renders images 0..num_images-1 of a split; class labels cycle 0, 1, ..., num_classes-1.

    Returns ``image`` (N, 3, H, W) uint8 RGB, ``label`` (N,) int64, ``mask`` (N, H, W) bool,
    ``box`` (N, 4) float32 [x0, y0, x1, y1] in px.
    """
    images = np.empty((num_images, 3, image_size, image_size), dtype=np.uint8)
    masks = np.empty((num_images, image_size, image_size), dtype=bool)
    labels = np.arange(num_images) % num_classes
    for i in range(num_images):
        image, masks[i] = render_image(np.random.default_rng([seed, SPLITS[split], i]), labels[i], image_size)
        images[i] = np.round(image * 255)
    mask = torch.from_numpy(masks)
    return {
        "image": torch.from_numpy(images),
        "label": torch.from_numpy(labels).long(),
        "mask": mask,
        "box": mask_to_box(mask),
    }


class ShapesDataset(Dataset):
    """Pre-rendered images of `render_split`; items are dicts of ``image`` (3, H, W) float32 normalised
    with `mean`/`std`, ``label`` () int64, ``mask`` (H, W) bool, ``box_mask`` (H, W) bool and ``box`` (4,)."""

    def __init__(
        self, data: dict[str, torch.Tensor], mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.data = data
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask, box = self.data["mask"][i], self.data["box"][i]
        return {
            "image": (self.data["image"][i].float() / 255 - self.mean) / self.std,
            "label": self.data["label"][i],
            "mask": mask,
            "box_mask": box_to_mask(box, *mask.shape),
            "box": box,
        }


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class ShapesDataModule(ImageDataModule):
    """The `shapes` dataset (see the module docstring) as a datamodule.

    Args:
        image_size: image side H = W in px, at least 32.
        num_classes: 2..6; the classes are the first `num_classes` of ``SHAPE_NAMES``.
        num_train, num_val, num_test: images per split.
        seed: data seed; image i of a split is a function of (seed, split, i) only.
        batch_size, num_workers: dataloader settings; the training loader shuffles.
        augment: during Lightning training, give each training image a random one of the 8 rotations by
            multiples of 90 degrees and reflections (the classes are invariant to them), with its mask and box.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    has_masks = True
    has_boxes = True

    def __init__(
        self,
        image_size: int = 64,
        num_classes: int = 4,
        num_train: int = 4000,
        num_val: int = 500,
        num_test: int = 500,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__()
        _check_int("image_size", image_size, MIN_IMAGE_SIZE)
        if isinstance(num_classes, bool) or num_classes not in range(2, len(SHAPE_NAMES) + 1):
            raise ValueError(
                f"num_classes must be in 2..{len(SHAPE_NAMES)} (classes, in order: "
                f"{', '.join(SHAPE_NAMES)}), got {num_classes!r}"
            )
        for name, value, low in [
            ("num_train", num_train, 1),
            ("num_val", num_val, 1),
            ("num_test", num_test, 1),
            ("seed", seed, 0),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ]:
            _check_int(name, value, low)
        self.save_hyperparameters()
        self.image_size, self.num_classes, self.seed = image_size, num_classes, seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.input_size = (3, image_size, image_size)
        self.class_names = list(SHAPE_NAMES[:num_classes])
        self.datasets: dict[str, ShapesDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Renders the splits that `stage` needs: fit -> train+val, validate -> val, test/predict -> test,
        None -> all. Each split is rendered once and cached."""
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in needed.get(stage, list(SPLITS)):
            self.dataset(split)

    def dataset(self, split: str) -> ShapesDataset:
        """The dataset of `split` ("train", "val" or "test"), rendered on first use."""
        if split not in self.datasets:
            data = render_split(split, self.sizes[split], self.image_size, self.num_classes, self.seed)
            self.datasets[split] = ShapesDataset(data, self.mean, self.std)
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        if self.augment and self.trainer is not None and self.trainer.training:
            batch = dihedral_augment(
                batch, torch.randint(0, 8, (batch["label"].shape[0],), device=batch["label"].device)
            )
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def dihedral_augment(batch: dict[str, torch.Tensor], element: torch.Tensor) -> dict[str, torch.Tensor]:
    """Apply dihedral group element `element[i]` in 0..7 (rot90 k = e % 4, then a flip if e >= 4) to image i,
    its ``mask`` and ``box_mask`` (N, [C,] H, W); ``box`` is recomputed from the transformed box mask."""
    out = dict(batch)
    for key in ("image", "mask", "box_mask"):
        if key not in batch:
            continue
        x = batch[key].clone()
        for e in range(8):
            sel = element == e
            if sel.any():
                y = torch.rot90(batch[key][sel], e % 4, dims=(-2, -1))
                x[sel] = y.flip(-1) if e >= 4 else y
        out[key] = x
    if "box" in batch and "box_mask" in out:
        out["box"] = mask_to_box(out["box_mask"]).to(batch["box"].dtype)
    return out
