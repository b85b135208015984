"""Bounding-box ratio (IBA paper section 4.5)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from infoflow.errors import InputError
from infoflow.utils.validation import check_maps


class BoundingBoxRatio(Metric):
    """Fraction of the n highest-scored pixels that fall inside the box, n being the box's pixel count.

    Only images whose box (the union of an image's boxes) covers at most `max_box_fraction` of the image
    are scored (paper: 33%); images without a box are skipped too. Ties in the attribution are broken
    deterministically: among equal scores, the pixel earlier in row-major order ranks higher (stable sort).

    States (sum-reduced over processes): the sum of the ratios and the number of scored images.
    compute() returns the mean ratio in [0, 1] (NaN before any image was scored).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    ratio_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, max_box_fraction: float = 0.33, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_box_fraction = float(max_box_fraction)
        self.add_state("ratio_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, attributions: torch.Tensor, box_mask: torch.Tensor) -> None:
        """Add a batch: attributions (N, H, W) and box_mask (N, H, W) bool."""
        if not isinstance(box_mask, torch.Tensor) or box_mask.dim() != 3:
            got = tuple(box_mask.shape) if isinstance(box_mask, torch.Tensor) else type(box_mask).__name__
            raise InputError(f"expected box_mask of shape (N, H, W), got {got}")
        check_maps(attributions, tuple(box_mask.shape))
        box = box_mask.to(attributions.device, torch.bool).flatten(1)
        n = box.sum(1)
        keep = (n > 0) & (n <= self.max_box_fraction * box.shape[1])
        box, n = box[keep], n[keep]
        scores = attributions.detach().flatten(1)[keep]
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        hits = box.gather(1, order).cumsum(1).gather(1, (n - 1).unsqueeze(1)).squeeze(1)
        self.ratio_sum += (hits.double() / n).sum().to(self.ratio_sum.device)
        self.count += int(keep.sum())

    def compute(self) -> torch.Tensor:
        return self.ratio_sum / self.count
