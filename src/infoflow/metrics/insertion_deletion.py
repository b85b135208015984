"""Insertion and deletion (Petsiuk et al. 2018, RISE): the target probability as the most relevant pixels (or
tiles) are inserted into a blurred copy of the image, or deleted to a constant, and the areas under the
two curves."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torchmetrics import Metric
from torchvision.transforms.v2.functional import gaussian_blur

from infoflow.errors import ConfigError
from infoflow.metrics.perturb import (
    Classifier,
    classifier_device,
    resolve_classifier,
    run_perturbations,
    tune_key,
)
from infoflow.metrics.tiles import TileGrid
from infoflow.utils.modules import hide_module
from infoflow.utils.validation import as_target, check_batch_size, check_images, check_maps


class InsertionDeletionResult(NamedTuple):
    """Mean curves over images.

    Attributes:
        fractions: (P,) fraction of the pixels (tiles) inserted / deleted at each point, from 0 to 1.
        insertion, deletion: (P,) mean target softmax probability at each point.
        insertion_auc: () area under the insertion curve over the fraction axis (higher is better).
        deletion_auc: () area under the deletion curve (lower is better).
    """

    fractions: torch.Tensor
    insertion: torch.Tensor
    deletion: torch.Tensor
    insertion_auc: torch.Tensor
    deletion_auc: torch.Tensor


def blurred(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The insertion start image: a Gaussian blur of (N, C, H, W) images (reflect padding at the border)."""
    return gaussian_blur(images, [kernel_size, kernel_size], [sigma, sigma])


class InsertionDeletion(Metric):
    """Insertion and deletion curves and their areas, over pixels (`tile_size=1`) or square tiles.

    Pixels (tiles) are ranked by the (mean) attribution, most relevant first (ties: lower index first,
    row-major). Insertion starts from the blurred image (`blurred`: Gaussian, `kernel_size`, `sigma` px; RISE's
    11 and 5) and puts the original pixels back in that order; deletion sets them to `deletion_value` (in the
    model's normalised input space; 0 is the dataset mean there). The target softmax probability is recorded
    after `num_points` evenly spaced counts from none to all pixels (rounded, de-duplicated). All perturbed
    images are built on the model's device and run in batches of `batch_size`, without gradients.

    States (sum-reduced over processes): per-point probability sums for insertion and deletion, image count.

    Args:
        model: classifier mapping normalised images (N, C, H, W) to logits, in eval mode.
        image_size: (H, W) in pixels.
        tile_size: 1 for pixels (RISE), or a tile side in pixels.
        num_points: curve points including both ends.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    insertion_sum: torch.Tensor
    deletion_sum: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        model: Classifier,
        image_size: tuple[int, int],
        tile_size: int = 1,
        num_points: int = 101,
        kernel_size: int = 11,
        sigma: float = 5.0,
        deletion_value: float = 0.0,
        batch_size: int | str = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        batch_size = check_batch_size(batch_size)
        if num_points < 2 or kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
            raise ConfigError(f"need num_points >= 2, an odd kernel_size and sigma > 0; got "
                              f"{num_points}, {kernel_size}, {sigma}")
        hide_module(self, "model", resolve_classifier(model))  # not part of the state_dict
        self.grid = TileGrid(int(image_size[0]), int(image_size[1]), int(tile_size))
        self.kernel_size, self.sigma, self.deletion_value = int(kernel_size), float(sigma), float(deletion_value)
        self.batch_size = batch_size
        #: (P,) pixels (tiles) inserted / deleted at each curve point
        self.steps = torch.linspace(0, self.grid.num_tiles, num_points, dtype=torch.float64).round().long().unique()
        self.add_state("insertion_sum", torch.zeros(len(self.steps), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("deletion_sum", torch.zeros(len(self.steps), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, target: torch.Tensor | int, attributions: torch.Tensor) -> None:
        """Add a batch: images (N, C, H, W) normalised, target (N,) class indices, attributions (N, H, W)."""
        size = (self.grid.height, self.grid.width)
        check_images(images, size)
        check_maps(attributions, (images.shape[0], *size))
        device = classifier_device(self.model, images.device)
        target = as_target(target, images.shape[0], device)
        curves = self.curves(images.to(device), target, attributions.to(device))
        self.insertion_sum += curves[0].sum(0).to(self.insertion_sum.device)
        self.deletion_sum += curves[1].sum(0).to(self.deletion_sum.device)
        self.count += images.shape[0]

    @torch.no_grad()
    def curves(self, images: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
        """(2, N, P) float64 per-image insertion and deletion curves (inputs on the model's device)."""
        n, total, steps = images.shape[0], self.grid.num_tiles, self.steps.to(images.device)
        order = torch.sort(self.grid.tile_means(attributions), dim=1, descending=True, stable=True).indices
        position = torch.empty_like(order).scatter_(1, order, torch.arange(total, device=images.device).expand(n, -1))
        pixel_tiles = self.grid.pixel_tiles(images.device)
        start = blurred(images, self.kernel_size, self.sigma)
        constant = torch.full_like(images[:1], self.deletion_value)
        points = len(steps)

        def build(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            changed = (position[i] < steps[j % points, None])[:, pixel_tiles].unsqueeze(1)  # (B, 1, H, W)
            inserted = torch.where(changed, images[i], start[i])
            deleted = torch.where(changed, constant, images[i])
            return torch.where((j < points)[:, None, None, None], inserted, deleted)

        def forward(batch: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(batch).double(), dim=1).gather(1, target[i, None]).squeeze(1)

        prob = run_perturbations(forward, build, n, 2 * points, self.batch_size, images.device,
                                 tune_key=tune_key(self.model, "insertion_deletion"))
        return torch.stack([prob[:, :points], prob[:, points:]])

    def compute(self) -> InsertionDeletionResult:
        n = self.count.double()
        insertion, deletion = self.insertion_sum / n, self.deletion_sum / n
        fractions = self.steps.to(insertion.device, torch.float64) / self.grid.num_tiles
        return InsertionDeletionResult(fractions, insertion, deletion, torch.trapezoid(insertion, fractions),
                                       torch.trapezoid(deletion, fractions))

