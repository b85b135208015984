"""Sparseness (Chalasani et al. 2020): the Gini index of the attribution magnitudes."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from infoflow.errors import InputError
from infoflow.utils.validation import check_maps


def gini(maps: torch.Tensor) -> torch.Tensor:
    """(N,) float64 Gini index of |a| over the pixels of each (N, H, W) map.

    G = sum_k (2k - n - 1) a_(k) / (n sum_k a_(k)), a_(1) <= ... <= a_(n) the sorted magnitudes: 0 for a
    constant map (and for an all-zero one), 1 - 1/n for a map with a single non-zero pixel.
    """
    a = maps.detach().double().abs().flatten(1).sort(dim=1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    total = a.sum(1)
    g = ((2 * k - n - 1) * a).sum(1) / (n * total.clamp(min=torch.finfo(torch.float64).tiny))
    return torch.where(total > 0, g, 0.0)


class Sparseness(Metric):
    """Mean Gini index of the maps (higher: fewer pixels carry the attribution mass).

    States (sum-reduced over processes): the sum of the indices and the map count.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    gini_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("gini_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, attributions: torch.Tensor) -> None:
        """Add a batch of attribution maps (N, H, W)."""
        if attributions.dim() != 3:
            raise InputError(f"expected attribution maps (N, H, W), got {tuple(attributions.shape)}")
        check_maps(attributions, tuple(attributions.shape))
        self.gini_sum += gini(attributions).sum().to(self.gini_sum.device)
        self.count += attributions.shape[0]

    def compute(self) -> torch.Tensor:
        return self.gini_sum / self.count

