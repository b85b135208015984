"""Mask ratio: the bounding-box ratio with the object's pixel mask as the region."""

from __future__ import annotations

from typing import Any

import torch

from infoflow.metrics.bbox import BoundingBoxRatio
from infoflow.utils.validation import check_maps


class MaskRatio(BoundingBoxRatio):
    """Fraction of the n highest-scored pixels that lie on the object, n being the mask's pixel count.

    The honest ground-truth localisation score where pixel masks exist: the mask itself scores exactly 1,
    whereas on the box version it loses the box pixels that the object does not fill. Ties are broken as in
    `BoundingBoxRatio` (earlier pixel in row-major order first). Images with an empty mask, or a mask over
    more than `max_mask_fraction` of the image, are skipped (default: none but the empty ones).

    States (sum-reduced over processes): the sum of the ratios and the number of scored images.
    """

    def __init__(self, max_mask_fraction: float = 1.0, **kwargs: Any) -> None:
        super().__init__(max_box_fraction=max_mask_fraction, **kwargs)

    def update(self, attributions: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch: attributions (N, H, W) and object masks (N, H, W) bool."""
        check_maps(attributions, tuple(mask.shape))
        super().update(attributions, mask)
