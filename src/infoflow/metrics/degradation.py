"""Degradation (IBA paper section 4.6): MoRF and LeRF curves over tiles and the area between them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torchmetrics import Metric

from infoflow.errors import ConfigError
from infoflow.metrics.perturb import (
    Classifier,
    classifier_device,
    perturbation_network,
    resolve_classifier,
    run_perturbations,
    tune_key,
)
from infoflow.metrics.tiles import TileGrid
from infoflow.utils.modules import hide_module
from infoflow.utils.precision import resolve_precision
from infoflow.utils.validation import check_batch, check_batch_size


class DegradationResult(NamedTuple):
    """Mean degradation curves, normalised as in the paper's eq. 9: s = (p - b) / (t1 - b).

    Attributes:
        fractions: (P,) fraction of tiles replaced at each curve point, from 0 to 1.
        morf, lerf: (P,) normalised mean target probability, most / least relevant tiles first.
        score: () area between the LeRF and MoRF curves over the fraction axis (trapezoid rule).
        t1: () mean top-1 probability on the original images.
        b: () mean target probability on the fully degraded images.
    """

    fractions: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor
    score: torch.Tensor
    t1: torch.Tensor
    b: torch.Tensor


class Degradation(Metric):
    """MoRF/LeRF degradation over square tiles and the area between the two curves.

    Tiles are ranked by the mean attribution in each tile (ties: lower tile index first, row-major) and
    replaced, one by one, by the image's per-channel mean (in the model's normalised input space). For equal
    tiles the mean ranks as the paper's sum does; when the tile size does not divide the image, the mean
    keeps the smaller border tiles from ranking last for any positive map (which gives Random a spurious
    positive area). The
    target-class softmax probability is recorded after `steps` tiles, `steps` being `num_points` evenly
    spaced counts from 0 (original image) to all tiles (constant image), rounded and de-duplicated.
    All perturbed images of a batch are built as tensors on the model's device and run in batches of
    `batch_size`, without gradients.

    States (sum-reduced over processes): per-step sums of the target probability for MoRF and LeRF, the sum
    of the top-1 probability on the original images, and the image count; b is the last MoRF (= LeRF) point.

    Args:
        model: classifier mapping normalised images (N, C, H, W) to logits (N, classes), in eval mode.
        image_size: (H, W) of the images, in pixels.
        tile_size: tile side in pixels (paper: 8 and 14).
        num_points: curve points including both ends (101: every 1% of the tiles).
        batch_size: perturbed images per forward pass (bounds memory), or ``"auto"``: the fastest, measured once
            per network, image shape, device, precision and threads (`infoflow.metrics.perturb.run_perturbations`).
        precision: ``32`` | ``bf16`` | ``16-mixed`` for the classifier's passes on the perturbed images
            (`infoflow.utils.precision`; fp32 fallback with a warning without hardware support).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    morf_sum: torch.Tensor
    lerf_sum: torch.Tensor
    top1_sum: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        model: Classifier,
        image_size: tuple[int, int],
        tile_size: int = 8,
        num_points: int = 101,
        batch_size: int | str = 64,
        precision: str | int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
            raise ConfigError(f"num_points must be an integer >= 2 (points per curve), got {num_points!r}")
        batch_size = check_batch_size(batch_size)
        # kept out of the module tree so that the network's weights are not part of the metric's state_dict
        hide_module(self, "model", resolve_classifier(model))
        self.grid = TileGrid(int(image_size[0]), int(image_size[1]), int(tile_size))
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, classifier_device(self.model, torch.device("cpu")))
        total = self.grid.num_tiles
        #: (P,) number of replaced tiles at each curve point, from 0 to num_tiles
        self.steps = torch.linspace(0, total, num_points, dtype=torch.float64).round().long().unique()
        points = len(self.steps)
        self.add_state("morf_sum", torch.zeros(points, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("lerf_sum", torch.zeros(points, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("top1_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, target: torch.Tensor | int, attributions: torch.Tensor) -> None:
        """Add a batch: images (N, C, H, W) normalised, target (N,) class indices, attributions (N, H, W)."""
        size = (self.grid.height, self.grid.width)
        device = classifier_device(self.model, images.device)
        target = check_batch(images, target, attributions, size).to(device)
        images, attributions = images.to(device), attributions.to(device)
        curves, top1 = degradation_curves(
            self.model, images, target, attributions, self.grid, self.steps.to(device), self.batch_size,
            self.precision,
        )
        self.morf_sum += curves[0].sum(0).to(self.morf_sum.device)
        self.lerf_sum += curves[1].sum(0).to(self.lerf_sum.device)
        self.top1_sum += top1.sum().to(self.top1_sum.device)
        self.count += images.shape[0]

    def compute(self) -> DegradationResult:
        n = self.count.double()
        morf, lerf, t1 = self.morf_sum / n, self.lerf_sum / n, self.top1_sum / n
        b = morf[-1]
        morf, lerf = (morf - b) / (t1 - b), (lerf - b) / (t1 - b)
        fractions = self.steps.to(morf.device, torch.float64) / self.grid.num_tiles
        score = torch.trapezoid(lerf - morf, fractions)
        return DegradationResult(fractions, morf, lerf, score, t1, b)


@torch.no_grad()
def degradation_curves(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
    grid: TileGrid,
    steps: torch.Tensor,
    batch_size: int | str,
    precision: str = "32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised per-image degradation curves, batched.

    Args:
        images (N, C, H, W), target (N,), attributions (N, H, W) on the model's device;
        steps: (P,) increasing numbers of replaced tiles, starting at 0 and ending at `grid.num_tiles`.
    Returns:
        curves (2, N, P): target probability after each step, MoRF then LeRF (float64);
        top1 (N,): top-1 probability on the original images (float64).
    """
    device, n, total = images.device, images.shape[0], grid.num_tiles
    scores = grid.tile_means(attributions)
    ranks = torch.arange(total, device=device).expand(n, total)
    position = torch.empty(2, n, total, dtype=torch.long, device=device)  # place of each tile in the order
    for k, descending in enumerate((True, False)):
        order = torch.sort(scores, dim=1, descending=descending, stable=True).indices
        position[k].scatter_(1, order, ranks)
    pixel_tiles = grid.pixel_tiles(device)
    means = images.mean(dim=(2, 3), keepdim=True)

    # per image: the original and the constant image once, then the inner steps for MoRF and for LeRF
    inner = steps[1:-1]
    step_of = torch.cat([steps.new_tensor([0, total]), inner, inner])
    order_of = torch.cat([steps.new_zeros(2 + len(inner)), steps.new_ones(len(inner))])

    def build(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        removed = position[order_of[j], i] < step_of[j].unsqueeze(1)  # (B, num_tiles)
        return torch.where(removed[:, pixel_tiles].unsqueeze(1), means[i], images[i])

    with perturbation_network(model, precision, images[:1]) as net:

        def forward(batch: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(net(batch).double(), dim=1)
            return torch.stack([probs.gather(1, target[i, None]).squeeze(1), probs.amax(dim=1)], dim=1)

        values = run_perturbations(forward, build, n, len(step_of), batch_size, device, precision,
                                   tune_key(model, "degradation"))
    prob, top1 = values[..., 0], values[:, 0, 1]
    ends = prob[:, :1], prob[:, 1:2]
    morf = torch.cat([ends[0], prob[:, 2 : 2 + len(inner)], ends[1]], dim=1)
    lerf = torch.cat([ends[0], prob[:, 2 + len(inner) :], ends[1]], dim=1)
    return torch.stack([morf, lerf]), top1
