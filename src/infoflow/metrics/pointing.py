"""Pointing game (Zhang et al. 2018) and energy-based pointing game (Wang et al. 2020, Score-CAM)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from infoflow.utils.validation import check_maps, check_regions


class PointingGame(Metric):
    """Fraction of maps whose maximum lies in the region (box or mask), within `tolerance` pixels.

    The maximum is the first maximal pixel in row-major order; it hits when its Euclidean distance to the
    nearest region pixel is at most `tolerance` (Zhang et al.: 15 px at 224x224; 0: the pixel itself must lie
    in the region). Regions are boxes drawn as (N, H, W) masks, or object masks.

    States (sum-reduced over processes): hits and images. compute() -> hit rate in [0, 1].
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    hits: torch.Tensor
    count: torch.Tensor

    def __init__(self, tolerance: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tolerance = float(tolerance)
        self.add_state("hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, attributions: torch.Tensor, region: torch.Tensor) -> None:
        """Add a batch: attributions (N, H, W) and region masks (N, H, W) bool (none empty or full)."""
        check_maps(attributions, tuple(region.shape))
        region = check_regions(region.to(attributions.device), tuple(attributions.shape))
        self.hits += int(pointing_hits(attributions.detach(), region, self.tolerance).sum())
        self.count += attributions.shape[0]

    def compute(self) -> torch.Tensor:
        return self.hits.double() / self.count


def pointing_hits(attributions: torch.Tensor, region: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """(N,) bool: whether the first maximum of each (H, W) map lies within `tolerance` px of its region."""
    n, h, w = attributions.shape
    peak = attributions.flatten(1).argmax(1)  # first maximum in row-major order
    rows = torch.arange(h, device=region.device).view(1, h, 1)
    cols = torch.arange(w, device=region.device).view(1, 1, w)
    d2 = (rows - (peak // w).view(n, 1, 1)) ** 2 + (cols - (peak % w).view(n, 1, 1)) ** 2
    return (region & (d2 <= tolerance**2)).flatten(1).any(1)


class EnergyPointingGame(Metric):
    """Mean share of the positive attribution mass that falls inside the region (box or mask).

    Per map: sum(max(a, 0) inside) / sum(max(a, 0)); a map without positive values scores 0.
    States (sum-reduced): the sum of the shares and the image count. compute() -> mean share in [0, 1].
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    share_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("share_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, attributions: torch.Tensor, region: torch.Tensor) -> None:
        """Add a batch: attributions (N, H, W) and region masks (N, H, W) bool (none empty or full)."""
        check_maps(attributions, tuple(region.shape))
        region = check_regions(region.to(attributions.device), tuple(attributions.shape))
        self.share_sum += energy_share(attributions.detach(), region).sum().to(self.share_sum.device)
        self.count += attributions.shape[0]

    def compute(self) -> torch.Tensor:
        return self.share_sum / self.count


def energy_share(attributions: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(N,) float64 share of each map's positive mass inside its region (0 for a map with no positive mass)."""
    positive = attributions.double().clamp(min=0).flatten(1)
    total = positive.sum(1)
    inside = (positive * region.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
