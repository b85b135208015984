"""Sanity check (Adebayo et al. 2018; IBA paper section 4.3 and appendix G.1): SSIM between the heatmaps
of the original and of cascadingly randomised models."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from infoflow.errors import ConfigError, InputError
from infoflow.models.zoo import ZooModel

M = TypeVar("M", nn.Module, ZooModel)


class Explainer(Protocol):
    """What the metrics that re-run a method call: ``attribute(images (N, C, H, W), target (N,)) -> (N, H, W)``
    (an `infoflow.interface.Attribution`, or any object with that method)."""

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


def normalize_heatmap(maps: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """Clip each (H, W) map of (N, H, W) to its own `low`..`high` quantiles (linear interpolation, as
    numpy.percentile) and rescale that range to [0, 1]; a map whose range is empty becomes 0. float64."""
    flat = maps.detach().flatten(1).double()
    ordered = flat.sort(dim=1).values
    pos = torch.tensor([low, high], dtype=torch.float64, device=flat.device) * (flat.shape[1] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=flat.shape[1] - 1)
    bounds = ordered[:, lo] + (pos - lo) * (ordered[:, hi] - ordered[:, lo])  # (N, 2)
    lower, upper = bounds[:, :1], bounds[:, 1:]
    span = torch.where(upper > lower, upper - lower, torch.ones_like(upper))
    scaled = (flat.clamp(lower, upper) - lower) / span
    return scaled.view_as(maps)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    win_size: int = 5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM of (N, H, W) map pairs -> (N,), float64.

    Equals skimage's ``structural_similarity(x, y, win_size=win_size, data_range=data_range)`` (uniform
    window, sample covariance, mean over the positions whose window lies inside the image).
    """
    if x.shape != y.shape or x.dim() != 3 or min(x.shape[1:]) < win_size:
        raise InputError(
            f"expected two (N, H, W) maps with H, W >= {win_size}, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x, y = x.double().unsqueeze(1), y.double().unsqueeze(1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    ux, uy = mean(x), mean(y)
    cov_norm = win_size**2 / (win_size**2 - 1)  # sample covariance
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def heatmap_ssim(
    original: torch.Tensor, other: torch.Tensor, signed: bool = False, win_size: int = 5
) -> torch.Tensor:
    """SSIM (N,) between normalised heatmaps (N, H, W); with `signed` (LRP), the paper's
    max(ssim(h, normalize(h_r)), ssim(h, normalize(-h_r)))."""
    h = normalize_heatmap(original)
    s = ssim(h, normalize_heatmap(other), win_size)
    if signed:
        s = torch.maximum(s, ssim(h, normalize_heatmap(-other), win_size))
    return s


class SanitySSIM(Metric):
    """Mean SSIM between the heatmaps of the original model and of each randomisation step.

    Args:
        layers: one label per randomisation step, in cascade order (last layer first).
        signed: take the better of h_r and -h_r (the paper's handling of LRP's sign flip).
        win_size: SSIM window side, in pixels (paper: 5).

    States (sum-reduced over processes): per-step SSIM sums and counts. compute() -> (L,) mean SSIM.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    ssim_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, layers: Sequence[str], signed: bool = False, win_size: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layers = list(layers)
        self.signed = signed
        self.win_size = win_size
        self.add_state("ssim_sum", torch.zeros(len(self.layers), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(len(self.layers), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, original: torch.Tensor, randomized: torch.Tensor, step: int) -> None:
        """Add heatmaps (N, H, W) of the original model and of randomisation step `step` (index in `layers`)."""
        s = heatmap_ssim(original, randomized.to(original.device), self.signed, self.win_size)
        self.ssim_sum[step] += s.sum().to(self.ssim_sum.device)
        self.count[step] += s.numel()

    def compute(self) -> torch.Tensor:
        return self.ssim_sum / self.count


def resettable_layers(model: ZooModel) -> list[str]:
    """The layers of `model` (in forward order) that the cascade can randomise: those whose parameter module
    holds a submodule with ``reset_parameters``, one name per module (aliases such as a timm model's ``mid``
    and parameter-free outputs such as a ReLU are left out)."""
    seen: set[str] = set()
    names = []
    for name in model.layers:
        path = model.parameter_path(name)
        target = model.module.get_submodule(path)
        if path in seen or not any(callable(getattr(m, "reset_parameters", None)) for m in target.modules()):
            continue
        seen.add(path)
        names.append(name)
    return names


def cascading_randomization(model: M, layers: Sequence[str], seed: int = 0) -> Iterator[tuple[str, M]]:
    """Re-initialise the layers from the last one down, cumulatively, on one deep copy of `model`.

    Args:
        model: an nn.Module, or a ZooModel (then `layers` may use the papers' layer names).
        layers: module paths of the parameterised layers (or blocks) in forward order; for a ZooModel also
            layer names (a transformer's token-map layer randomises the block that computes it).
        seed: the re-initialisation of step i is seeded with seed + i (global RNG state is restored).
    Yields:
        (layer, randomised copy) after re-initialising `layer` and every layer after it. The same copy is
        mutated in place by the next step. Each module inside a layer that has ``reset_parameters``
        (convolutions, linear and normalisation layers) gets PyTorch's default initialisation.
    """
    randomized = copy.deepcopy(model)
    module = randomized.module if isinstance(randomized, ZooModel) else randomized
    paths = [randomized.parameter_path(name) if isinstance(randomized, ZooModel) else name for name in layers]
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    for step, (name, path) in enumerate(zip(reversed(layers), reversed(paths), strict=True)):
        target = module.get_submodule(path)
        resettable = [m for m in target.modules() if callable(getattr(m, "reset_parameters", None))]
        if not resettable:
            raise ConfigError(f"layer {name!r} ({path}) has no submodule with reset_parameters()")
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed + step)
            for m in resettable:
                m.reset_parameters()
        yield name, randomized


def cascading_sanity_check(
    model: M,
    layers: Sequence[str],
    make_method: Callable[[M], Explainer],
    batches: Iterable[dict[str, torch.Tensor]],
    signed: bool = False,
    seed: int = 0,
    win_size: int = 5,
) -> SanitySSIM:
    """Run the cascading-randomisation sanity check of one attribution method.

    Args:
        model: the trained model (nn.Module or ZooModel), in eval mode; it is not modified.
        layers: module paths (or, for a ZooModel, paper layer names) of its parameterised layers in forward
            order; the cascade randomises them from the last one down.
        make_method: builds the attribution method for a model: ``make_method(model).attribute(images,
            target) -> (N, H, W)``.
        batches: batches in the datamodule format (``image`` (N, C, H, W), ``label`` (N,)); read once.
        signed: LRP's sign-flip handling (see `heatmap_ssim`).
    Returns:
        the SanitySSIM metric, its `layers` in cascade order; ``compute()`` gives the mean SSIM per step.
    """
    module = model.module if isinstance(model, ZooModel) else model
    device = next(module.parameters()).device
    data = [(b["image"].to(device), b["label"].to(device)) for b in batches]
    method = make_method(model)
    originals = [method.attribute(x, t).detach() for x, t in data]
    metric = SanitySSIM(list(reversed(layers)), signed=signed, win_size=win_size).to(device)
    for step, (_, randomized) in enumerate(cascading_randomization(model, layers, seed)):
        method = make_method(randomized)
        for (x, t), h in zip(data, originals, strict=True):
            metric.update(h, method.attribute(x, t).detach(), step)
    return metric
