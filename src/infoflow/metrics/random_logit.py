"""Random-logit test (Sixt et al. 2020): SSIM between the map for the target class and the map for a random
other class. A method that explains the class should give dissimilar maps (low SSIM)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torchmetrics import Metric

from infoflow.errors import ConfigError
from infoflow.metrics.sanity import Explainer, heatmap_ssim
from infoflow.utils.validation import check_maps


def random_other_class(target: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) int64: for each target, a class drawn uniformly from the other `num_classes - 1` classes."""
    if num_classes < 2:
        raise ConfigError(f"the random-logit test needs at least 2 classes, got num_classes={num_classes}")
    shift = torch.randint(1, num_classes, target.shape, generator=generator, device=generator.device)
    return (target + shift.to(target.device)) % num_classes


class RandomLogit(Metric):
    """Mean SSIM between heatmaps for the target and for a random other class (lower is better).

    Heatmaps are compared as in the sanity check (`heatmap_ssim`: 1%/99% quantile normalisation, SSIM window
    `win_size` px; `signed`: the better of h_r and -h_r). States (sum-reduced): SSIM sum and map count.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    ssim_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, signed: bool = False, win_size: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.signed, self.win_size = signed, int(win_size)
        self.add_state("ssim_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, attributions: torch.Tensor, other_class_attributions: torch.Tensor) -> None:
        """Add maps (N, H, W) for the target classes and for the random other classes of the same images."""
        check_maps(attributions, tuple(attributions.shape))
        check_maps(other_class_attributions, tuple(attributions.shape), "random-class maps")
        s = heatmap_ssim(attributions, other_class_attributions.to(attributions.device), self.signed, self.win_size)
        self.ssim_sum += s.sum().to(self.ssim_sum.device)
        self.count += s.numel()

    def compute(self) -> torch.Tensor:
        return self.ssim_sum / self.count


def random_logit_check(
    method: Explainer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    seed: int = 0,
    signed: bool = False,
) -> RandomLogit:
    """Run the random-logit test of `method` on (images (N, C, H, W), target (N,)) batches.

    The other classes come from a CPU generator seeded with `seed` (the same for every method)."""
    generator = torch.Generator().manual_seed(seed)
    metric: RandomLogit | None = None
    for images, target in batches:
        maps = method.attribute(images, target).detach()
        other = method.attribute(images, random_other_class(target.cpu(), num_classes, generator).to(images.device))
        metric = metric or RandomLogit(signed=signed).to(maps.device)
        metric.update(maps, other.detach())
    if metric is None:
        raise ConfigError("random_logit_check got no batches")
    return metric
