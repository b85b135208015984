"""Sensitivity-n (Ancona et al. 2018; IBA paper section 4.4) over random sets of tiles."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torchmetrics import Metric
from torchmetrics.functional import pearson_corrcoef

from infoflow.errors import ConfigError, InputError
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
from infoflow.utils.validation import check_batch, check_batch_size, check_count, check_number


class SensitivityNResult(NamedTuple):
    """Attributes:
    n: (K,) int64 number of tiles in each masked set (pixels: n * tile_size**2 when tiles fit the image).
    correlation: (K,) float64 Pearson correlation for each n, averaged over images.
    """

    n: torch.Tensor
    correlation: torch.Tensor


class SensitivityN(Metric):
    """Sensitivity-n exactly as Ancona et al. (2018) define it, over tiles of `tile_size` pixels.

    For each n (`num_n` values log-spaced from 1 to `max_fraction` of the tiles, rounded to distinct
    integers) `num_subsets` random sets T of n tiles are drawn once from a generator seeded with `seed`
    (the same sets for every image). For each image and n, the metric takes the Pearson correlation, across
    the sets, between the attribution mass in T (the sum over its pixels) and the drop of the target logit
    S_c(x) - S_c(x[T = 0]) when T's pixels are set to 0 in the model's (normalised) input space; it then
    averages over images. If either series is constant over the sets (e.g. a constant attribution with
    equal-size tiles) the correlation is undefined and counts as 0; "constant" allows for float64 rounding
    in the sums (relative range <= 1e-9, see `is_constant`). Statistics are taken in float64.

    States (sum-reduced over processes): the sum of the correlations per n and the image count.

    Args:
        model: classifier mapping normalised images (N, C, H, W) to logits (N, classes), in eval mode.
        image_size: (H, W) of the images, in pixels.
        tile_size: tile side in pixels (paper: 1 and 8).
        num_n, max_fraction: how many set sizes n, and the largest as a fraction of the tiles.
        num_subsets: random tile sets per n.
        seed: seed of the tile sets.
        batch_size: perturbed images per forward pass (bounds memory), or ``"auto"``: the fastest, measured once
            per network, image shape, device, precision and threads (`infoflow.metrics.perturb.run_perturbations`).
        precision: ``32`` | ``bf16`` | ``16-mixed`` for the classifier's passes on the perturbed images
            (`infoflow.utils.precision`; fp32 fallback with a warning without hardware support).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    corr_sum: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        model: Classifier,
        image_size: tuple[int, int],
        tile_size: int = 8,
        num_n: int = 16,
        max_fraction: float = 0.8,
        num_subsets: int = 100,
        seed: int = 0,
        batch_size: int | str = 64,
        precision: str | int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if check_number(max_fraction, "max_fraction", 0.0, strict=True) > 1:
            raise ConfigError(f"max_fraction must be in (0, 1] (a fraction of the tiles), got {max_fraction!r}")
        check_count(num_n, "num_n")
        if check_count(num_subsets, "num_subsets") < 2:
            raise ConfigError(f"num_subsets must be an integer >= 2 (a correlation needs two), got {num_subsets!r}")
        batch_size = check_batch_size(batch_size)
        # kept out of the module tree so that the network's weights are not part of the metric's state_dict
        hide_module(self, "model", resolve_classifier(model))
        self.grid = TileGrid(int(image_size[0]), int(image_size[1]), int(tile_size))
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, classifier_device(self.model, torch.device("cpu")))
        total = self.grid.num_tiles
        top = math.log10(max(1.0, max_fraction * total))
        #: (K,) set sizes n, in tiles
        self.n_values = (
            torch.logspace(0, top, num_n, dtype=torch.float64).round().long().clamp(1, total).unique()
        )
        #: (K, num_subsets, num_tiles) bool: the random tile sets, one row per set
        self.subsets = random_tile_sets(total, self.n_values, num_subsets, seed)
        self._device_subsets = self.subsets
        self.add_state("corr_sum", torch.zeros(len(self.n_values), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _subsets_on(self, device: torch.device) -> torch.Tensor:
        if self._device_subsets.device != device:
            self._device_subsets = self.subsets.to(device)
        return self._device_subsets

    def drops(self, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """(N, K, S) float64 drop of the target logit when each tile set is zeroed, on the model's device.

        The drops do not depend on the attribution: compute them once per batch and pass them to the
        `update` of every method's metric (same image size, tiles, sets and model) instead of recomputing.
        """
        size = (self.grid.height, self.grid.width)
        device = classifier_device(self.model, images.device)
        target = check_batch(images, target, None, size).to(device)
        return logit_drops(self.model, images.to(device), target, self.grid, self._subsets_on(device),
                           self.batch_size, self.precision)

    def update(
        self,
        images: torch.Tensor,
        target: torch.Tensor | int,
        attributions: torch.Tensor,
        drops: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: images (N, C, H, W) normalised, target (N,) class indices, attributions (N, H, W);
        `drops` (N, K, S) from `drops(images, target)` when already computed for these images."""
        size = (self.grid.height, self.grid.width)
        device = classifier_device(self.model, images.device)
        target = check_batch(images, target, attributions, size).to(device)
        subsets = self._subsets_on(device)
        if drops is None:
            drops = self.drops(images, target)
        elif tuple(drops.shape) != (images.shape[0], *subsets.shape[:2]):
            raise InputError(f"drops of shape {tuple(drops.shape)} do not fit {images.shape[0]} images, "
                             f"{subsets.shape[0]} set sizes and {subsets.shape[1]} sets each")
        corr = pearson(tile_set_masses(attributions.to(device), self.grid, subsets), drops.to(device))
        self.corr_sum += corr.sum(0).to(self.corr_sum.device)
        self.count += images.shape[0]

    def compute(self) -> SensitivityNResult:
        return SensitivityNResult(self.n_values.to(self.corr_sum.device), self.corr_sum / self.count)


def random_tile_sets(num_tiles: int, n_values: torch.Tensor, num_subsets: int, seed: int) -> torch.Tensor:
    """(K, num_subsets, num_tiles) bool: for each n, `num_subsets` uniformly random sets of n distinct tiles."""
    generator = torch.Generator().manual_seed(seed)
    sets = torch.zeros(len(n_values), num_subsets, num_tiles, dtype=torch.bool)
    for k, n in enumerate(n_values.tolist()):
        chosen = torch.rand(num_subsets, num_tiles, generator=generator).argsort(dim=1)[:, :n]
        sets[k].scatter_(1, chosen, True)
    return sets


def is_constant(x: torch.Tensor, rtol: float = 1e-9) -> torch.Tensor:
    """Whether each row (last dimension) is constant up to float64 rounding: max - min <= rtol * max |x|."""
    return x.amax(-1) - x.amin(-1) <= rtol * x.abs().amax(-1)


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension (torchmetrics' `pearson_corrcoef`), in float64; 0 where x
    or y is constant (`is_constant`, also up to float64 rounding, where the coefficient is meaningless)."""
    x, y = x.double(), y.double()
    constant = is_constant(x) | is_constant(y)
    if constant.numel() == 0 or bool(constant.all()):
        return torch.zeros(constant.shape, dtype=torch.float64, device=x.device)
    # torchmetrics correlates the columns of (samples, series); constant rows get a placeholder, then 0
    ramp = torch.arange(x.shape[-1], dtype=torch.float64, device=x.device)
    x, y = (torch.where(constant[..., None], ramp, t).reshape(-1, t.shape[-1]).T for t in (x, y))
    corr = pearson_corrcoef(x, y).reshape(constant.shape)
    return torch.where(constant, torch.zeros_like(corr), corr)


def tile_set_masses(attributions: torch.Tensor, grid: TileGrid, subsets: torch.Tensor) -> torch.Tensor:
    """(N, K, S) float64 attribution mass of each tile set: attributions (N, H, W), subsets (K, S, num_tiles)."""
    scores = grid.tile_sums(attributions)
    return torch.stack([scores @ sets.T.double() for sets in subsets], dim=1)  # one n at a time: bounded memory


@torch.no_grad()
def logit_drops(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    target: torch.Tensor,
    grid: TileGrid,
    subsets: torch.Tensor,
    batch_size: int | str,
    precision: str = "32",
) -> torch.Tensor:
    """(N, K, S) float64 drop S_c(x) - S_c(x[T = 0]) of the target logit for every tile set T, batched.

    Args:
        images (N, C, H, W), target (N,) on the model's device; subsets: (K, S, num_tiles) bool, same device.
    """
    device, n = images.device, images.shape[0]
    k, s, total = subsets.shape
    flat = subsets.view(k * s, total)
    pixel_tiles = grid.pixel_tiles(device)

    def build(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        removed = flat[j][:, pixel_tiles].unsqueeze(1)  # (B, 1, H, W)
        return images[i].masked_fill(removed, 0)

    with perturbation_network(model, precision, images[:1]) as net:

        def logit(batch: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return net(batch).double().gather(1, target[i, None]).squeeze(1)

        key = tune_key(model, "sensitivity")
        base = run_perturbations(logit, lambda i, j: images[i], n, 1, batch_size, device, precision, key)  # (N, 1)
        drops = base - run_perturbations(logit, build, n, k * s, batch_size, device, precision, key)
    return drops.view(n, k, s)
