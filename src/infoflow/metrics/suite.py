"""One attribution method's evaluation metrics as a reusable unit: `MethodMetrics` builds them from
`MetricSettings`, updates them from a batch and the method's maps, and turns them into results.

Used by the Table 1 loop (`infoflow.analyses.attribution_metrics`) and usable from a callback. The
expensive metrics (insertion/deletion, ROAD, infidelity, max-sensitivity) run on the images whose global
``index`` is below `MetricSettings.subset_images`, the random-logit test on those below `sanity_images`.
Their random draws are seeded per image (``seed + index``), so N processes give the numbers of one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric

from infoflow.interface import Attribution
from infoflow.metrics.bbox import BoundingBoxRatio
from infoflow.metrics.degradation import Degradation
from infoflow.metrics.insertion_deletion import InsertionDeletion
from infoflow.metrics.mask_ratio import MaskRatio
from infoflow.metrics.pointing import EnergyPointingGame, PointingGame
from infoflow.metrics.random_logit import RandomLogit, random_other_class
from infoflow.metrics.road import ROAD
from infoflow.metrics.robustness import Infidelity, MaxSensitivity
from infoflow.metrics.sensitivity import SensitivityN
from infoflow.metrics.sparseness import Sparseness
from infoflow.utils.modules import hide_module


@dataclass
class MetricSettings:
    """What to measure. Keyword dicts go to the torchmetrics classes; a group set to None is not measured.

    Attributes:
        degradation_tiles, sensitivity_tiles: tile sides in pixels (paper: 8, 14 and 1, 8).
        degradation, sensitivity: `Degradation`, `SensitivityN` kwargs.
        bbox: `BoundingBoxRatio` kwargs (data with ``box_mask`` only).
        mask_ratio: `MaskRatio` kwargs (data with ``mask`` only).
        pointing: `PointingGame` kwargs (tolerance in px); also enables `EnergyPointingGame`. Region: the
            object mask if the data has one, else the box; images whose region is empty or the whole image
            are left out.
        sparseness: whether to measure the Gini index (`Sparseness`).
        insertion_deletion, road, infidelity, max_sensitivity: kwargs of the expensive metrics, run on
            `subset_images` images (their seeds are set per image).
        subset_images: images (global indices 0..subset_images-1) for the expensive metrics; 0: none.
        sanity_images: images (global indices 0..sanity_images-1) for the cascading sanity check and the
            random-logit test; 0: neither.
        sanity_layers: layers randomised in the cascade, in forward order.
        signed: methods (labels) whose SSIMs take the better of h_r and -h_r (LRP).
        win_size: SSIM window side in pixels (sanity check and random-logit test).
        random_logit: whether to run the random-logit test.
        seed: base of the per-image seeds (image ``index`` added).
    """

    degradation_tiles: Sequence[int] = (8, 14)
    degradation: dict[str, Any] = field(default_factory=dict)
    sensitivity_tiles: Sequence[int] = (1, 8)
    sensitivity: dict[str, Any] = field(default_factory=dict)
    bbox: dict[str, Any] | None = field(default_factory=dict)
    mask_ratio: dict[str, Any] | None = field(default_factory=dict)
    pointing: dict[str, Any] | None = field(default_factory=dict)
    sparseness: bool = True
    insertion_deletion: dict[str, Any] | None = field(default_factory=dict)
    road: dict[str, Any] | None = field(default_factory=dict)
    infidelity: dict[str, Any] | None = field(default_factory=dict)
    max_sensitivity: dict[str, Any] | None = field(default_factory=dict)
    subset_images: int = 8
    sanity_images: int = 4
    sanity_layers: Sequence[str] = ()
    signed: Sequence[str] = ()
    win_size: int = 5
    random_logit: bool = True
    seed: int = 0


#: metrics run one image at a time with seed ``seed + index`` (their random draws then do not depend on batching)
PER_IMAGE = ("road", "infidelity", "max_sensitivity")


class MethodMetrics(nn.Module):
    """The metrics of one attribution method (`metrics`, a ModuleDict by name, so they move with the owner module).

    Args:
        net: the classifier (normalised images (N, C, H, W) -> logits), in eval mode.
        image_size: (H, W) in pixels.
        settings: what to measure.
        signed: the method's SSIMs take the better of h_r and -h_r.
        boxes, masks: whether batches carry ``box_mask`` / ``mask`` (N, H, W).
        num_classes: classes of `net` (for the random-logit test's other class).
    """

    def __init__(self, net: nn.Module, image_size: tuple[int, int], settings: MetricSettings, *,
                 signed: bool = False, boxes: bool = False, masks: bool = False, num_classes: int = 0) -> None:
        s = settings
        size = (int(image_size[0]), int(image_size[1]))
        metrics: dict[str, Metric] = {
            **{f"degradation_{t}": Degradation(net, size, t, **s.degradation) for t in s.degradation_tiles},
            **{f"sensitivity_{t}": SensitivityN(net, size, t, **s.sensitivity) for t in s.sensitivity_tiles},
        }
        if boxes and s.bbox is not None:
            metrics["bbox"] = BoundingBoxRatio(**s.bbox)
        if masks and s.mask_ratio is not None:
            metrics["mask_ratio"] = MaskRatio(**s.mask_ratio)
        if (boxes or masks) and s.pointing is not None:
            metrics["pointing"] = PointingGame(**s.pointing)
            metrics["energy_pointing"] = EnergyPointingGame()
        if s.sparseness:
            metrics["sparseness"] = Sparseness()
        if s.subset_images > 0:
            if s.insertion_deletion is not None:
                metrics["insertion_deletion"] = InsertionDeletion(net, size, **s.insertion_deletion)
            if s.road is not None:
                metrics["road"] = ROAD(net, size, **s.road)
            if s.infidelity is not None:
                metrics["infidelity"] = Infidelity(net, **s.infidelity)
            if s.max_sensitivity is not None:  # the explanation function is the method's, set per update
                metrics["max_sensitivity"] = MaxSensitivity(_unset_explain, **s.max_sensitivity)
        if s.random_logit and s.sanity_images > 0 and num_classes >= 2:
            metrics["random_logit"] = RandomLogit(signed, s.win_size)
        super().__init__()
        self.metrics = nn.ModuleDict(metrics)
        hide_module(self, "net", net)  # not a submodule: the owner holds it
        self.settings, self.size, self.num_classes = s, size, int(num_classes)

    def update(self, method: Attribution, batch: Mapping[str, Any], target: torch.Tensor, maps: torch.Tensor,
               drops: Mapping[str, torch.Tensor] | None = None) -> None:
        """Add a batch: ``batch["image"]`` (N, C, H, W) normalised, its ``index`` (N,) global image indices
        (default: 0..N-1), ``box_mask``/``mask`` (N, H, W) when present; target (N,); the method's maps
        (N, H, W) of these images; `drops`: Sensitivity-n logit drops per metric name, shared by all methods
        (computed here when missing)."""
        x = batch["image"]
        index = batch.get("index", torch.arange(len(x), device=x.device)).to(x.device)
        maps = maps.detach()
        for name, metric in self.metrics.items():
            if name.startswith("degradation"):
                metric.update(x, target, maps)
            elif name.startswith("sensitivity"):
                metric.update(x, target, maps, drops=drops[name] if drops else None)
            elif name == "bbox":
                metric.update(maps, batch["box_mask"])
            elif name == "mask_ratio":
                metric.update(maps, batch["mask"])
            elif name in ("pointing", "energy_pointing"):
                region = batch["mask"] if "mask" in batch else batch["box_mask"]
                area = region.bool().flatten(1).sum(1)
                keep = (area > 0) & (area < region[0].numel())
                if keep.any():
                    metric.update(maps[keep], region[keep])
            elif name == "sparseness":
                metric.update(maps)
        subset = index < self.settings.subset_images
        if subset.any():
            self._update_subset(method, x[subset], target[subset], maps[subset], index[subset])
        sanity = index < self.settings.sanity_images
        if "random_logit" in self.metrics and sanity.any() and method.images_only:
            part = {k: v[sanity] if isinstance(v, torch.Tensor) and len(v) == len(x) else v for k, v in batch.items()}
            generators = [torch.Generator().manual_seed(self.settings.seed + int(i)) for i in index[sanity]]
            other = torch.cat([random_other_class(t.view(1).cpu(), self.num_classes, g)
                               for t, g in zip(target[sanity], generators, strict=True)]).to(target.device)
            with torch.enable_grad():
                other_maps = method.attribute_batch(part, other).detach()
            self.metrics["random_logit"].update(maps[sanity], other_maps)

    def _update_subset(self, method: Attribution, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                       index: torch.Tensor) -> None:
        """The expensive metrics on the subset images; the seeded ones one image at a time."""
        if "insertion_deletion" in self.metrics:
            self.metrics["insertion_deletion"].update(x, target, maps)
        s = self.settings
        builders: dict[str, Callable[[int], Metric]] = {
            "road": lambda seed: ROAD(self.net, self.size, **{**s.road, "seed": seed}),
            "infidelity": lambda seed: Infidelity(self.net, **{**s.infidelity, "seed": seed}),
        }
        if method.images_only:  # max-sensitivity re-attributes perturbed images
            builders["max_sensitivity"] = lambda seed: MaxSensitivity(
                _with_grad(method), **{**s.max_sensitivity, "seed": seed})
        for name, build in builders.items():
            if name not in self.metrics:
                continue
            for i in range(len(x)):
                part = build(s.seed + int(index[i]))
                args = (x[i:i + 1], target[i:i + 1]) + (() if name == "max_sensitivity" else (maps[i:i + 1],))
                part.update(*args)
                merge(self.metrics[name], part)

    def results(self) -> dict[str, Any]:
        """Reduce over processes (collective: call on every rank) and return the values by metric name:
        ``degradation_<tile>``/``sensitivity_<tile>``/``insertion_deletion``/``road`` their result tuples
        (on the CPU), the others () tensors; metrics that saw no image (e.g. random-logit of the ground truth)
        give None."""
        out: dict[str, Any] = {}
        for name, metric in self.metrics.items():
            with warnings.catch_warnings():  # metrics filled by merge_state count no update() call
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                value = metric.compute()
            if isinstance(value, tuple):
                value = type(value)(*(v.cpu() for v in value))
                empty = not all(torch.isfinite(v).all() for v in value)
            else:
                value = value.cpu()
                empty = value.numel() == 1 and math.isnan(float(value))
            out[name] = None if empty else value
        return out


def merge(metric: Metric, part: Metric) -> None:
    """Add the (sum-reduced) states of `part` into `metric`, on `metric`'s device."""
    metric.merge_state({key: value.to(metric.device) for key, value in part.metric_state.items()})


def _with_grad(method: Attribution) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`method.attribute` with gradients enabled (captum's `sensitivity_max` calls it under no_grad)."""

    def explain(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return method.attribute(images, target)

    return explain


def _unset_explain(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("this MaxSensitivity only accumulates states: MethodMetrics.update builds one per method")
