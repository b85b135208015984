"""Rendering the `shapes` images: a cluttered background, one class object on top, pixel noise last.

Image ``i`` of a split is rendered from ``np.random.default_rng([seed, split_id, i])`` alone, so the
data do not depend on the order or batch in which they are generated.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from infoflow.data.shapes.geometry import CIRCUMRADIUS, SHAPE_NAMES, signed_distance
from infoflow.data.shapes.masks import mask_to_box

#: split name -> split id in the per-image seed ``[seed, split_id, i]``
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
#: split id of the training split's no-object images (image j: ``[seed, EMPTY_SPLIT_ID, j]``)
EMPTY_SPLIT_ID = 3
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
    radius = CIRCUMRADIUS[name] * side
    cx, cy = rng.uniform(radius + 1, size - radius - 1, 2).tolist()  # fully inside, 1 px from the border
    angle = rng.uniform(0, 2 * np.pi)
    y0, x0 = max(int(cy - radius) - 1, 0), max(int(cx - radius) - 1, 0)
    rows, cols = slice(y0, int(cy + radius) + 2), slice(x0, int(cx + radius) + 2)
    u = (_pixel_centres(size)[None, cols] - cx) / side  # (1, w), unit-area frame before rotation
    v = (_pixel_centres(size)[rows, None] - cy) / side  # (h, 1)
    c, s = math.cos(angle), math.sin(angle)
    coverage = np.clip(0.5 - side * signed_distance(name, c * u + s * v, c * v - s * u), 0, 1)
    under = np.tensordot(background[:, rows, cols], coverage / coverage.sum(), 2)
    colour = rng.uniform(0, 1, (16, 3))  # candidates; the first with enough contrast, else the best
    contrast = np.linalg.norm(colour - under, axis=1)
    ok = np.flatnonzero(contrast >= MIN_CONTRAST)
    best = colour[ok[0] if len(ok) else contrast.argmax()]
    return (rows, cols), coverage.astype(np.float32), best.astype(np.float32)[:, None, None]


def render_image(
    rng: np.random.Generator, label: int | None, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image of class `label`: (3, H, W) float32 RGB in [0, 1] and the object's (H, W) bool mask
    (the pixels whose centre lies inside the object). ``label=None``: the background alone, empty mask."""
    image = _render_background(rng, image_size)
    mask = np.zeros((image_size, image_size), dtype=bool)
    if label is not None:
        (rows, cols), coverage, colour = _render_object(rng, image, label)
        patch = image[:, rows, cols]
        patch += coverage * (colour - patch)
        mask[rows, cols] = coverage >= 0.5
    image += NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1), mask


def render_split(
    split: str, num_images: int, image_size: int, num_classes: int, seed: int, num_empty: int = 0
) -> dict[str, torch.Tensor]:
    """Renders images 0..num_images-1 of a split; class labels cycle 0, 1, ..., num_classes-1.

    `num_empty` no-object images (background only, image j from ``[seed, EMPTY_SPLIT_ID, j]``) follow
    them, with empty masks and labels that also cycle 0, 1, ... (placeholders: no class is visible).

    Returns ``image`` (N, 3, H, W) uint8 RGB, ``label`` (N,) int64, ``mask`` (N, H, W) bool,
    ``box`` (N, 4) float32 [x0, y0, x1, y1] in px (for an empty mask: x0 >= x1, an empty box);
    N = num_images + num_empty.
    """
    n = num_images + num_empty
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    labels = np.concatenate([np.arange(num_images), np.arange(num_empty)]) % num_classes
    for i in range(n):
        if i < num_images:
            rng, label = np.random.default_rng([seed, SPLITS[split], i]), int(labels[i])
        else:
            rng, label = np.random.default_rng([seed, EMPTY_SPLIT_ID, i - num_images]), None
        image, masks[i] = render_image(rng, label, image_size)
        images[i] = np.round(image * 255)
    mask = torch.from_numpy(masks)
    return {
        "image": torch.from_numpy(images),
        "label": torch.from_numpy(labels).long(),
        "mask": mask,
        "box": mask_to_box(mask),
    }
