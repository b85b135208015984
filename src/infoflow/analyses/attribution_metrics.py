"""Attribution methods x metrics as a Lightning test loop, so the evaluation spreads over GPUs and nodes.

`AttributionEvaluation.test_step` computes every method's maps for its batch and updates that method's
torchmetrics (degradation per tile size, Sensitivity-n per tile size, bounding-box ratio, cascading
sanity-check SSIM); Sensitivity-n's perturbed forward passes do not depend on the maps, so they run once
per batch for all methods. The metrics' sum states reduce across processes in `on_test_epoch_end`, where the
results land in `results` (on every rank). `evaluation_loader` gives the first images of the test split,
each with its global ``index``, split over processes without padding, so 1 and N processes see exactly
the same images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from infoflow.interface import Attribution
from infoflow.metrics import BoundingBoxRatio, Degradation, SanitySSIM, SensitivityN, cascading_sanity_check
from infoflow.models.zoo import ZooModel

#: builds a method for a model: ``make(label, model, for_sanity) -> Attribution`` (fitted)
MethodFactory = Callable[[str, ZooModel, bool], Attribution]


@dataclass
class MetricSettings:
    """What to measure. Keyword dicts go to the torchmetrics classes (`Degradation`, `SensitivityN`, ...).

    Attributes:
        degradation_tiles, sensitivity_tiles: tile sides in pixels (paper: 8, 14 and 1, 8).
        sanity_images: images (global indices 0..sanity_images-1) for the cascading sanity check; 0: none.
        sanity_layers: layers randomised in the cascade, in forward order.
        signed: methods whose sanity SSIM takes the better of h_r and -h_r (LRP).
    """

    degradation_tiles: Sequence[int] = (8, 14)
    degradation: dict[str, Any] = field(default_factory=dict)
    sensitivity_tiles: Sequence[int] = (1, 8)
    sensitivity: dict[str, Any] = field(default_factory=dict)
    bbox: dict[str, Any] = field(default_factory=dict)
    sanity_images: int = 4
    sanity_layers: Sequence[str] = ()
    signed: Sequence[str] = ()
    win_size: int = 5


class AttributionEvaluation(pl.LightningModule):
    """Evaluates the methods `labels` (built on each process by `make`, once the model is on its device).

    Args:
        model: the zoo model to explain; its network is a submodule, so Lightning moves it.
        labels: one name per method (table rows).
        make: ``make(label, model, for_sanity)`` builds and fits a method (for_sanity: for a randomised copy).
        settings: the metrics.
        boxes: whether batches carry ``box_mask`` (else no bounding-box ratio).
        target: ``label`` or ``pred``: the class explained.
        seed: seed of the sanity check's re-initialisation.
        grid_batch: a batch whose maps rank 0 keeps for a heatmap grid (`grid_maps`, `grid_target`).
    Attributes:
        results: after the test loop: {label: {"degradation": {tile: DegradationResult},
            "sensitivity": {tile: SensitivityNResult}, "bbox": tensor, "sanity": (layers, ssim),
            "seconds": tensor (mean wall seconds per image of the attribution)}}.
    """

    def __init__(self, model: ZooModel, labels: Sequence[str], make: MethodFactory, settings: MetricSettings,
                 boxes: bool, target: str = "label", seed: int = 0,
                 grid_batch: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.zoo, self.labels, self.make, self.settings = model, list(labels), make, settings
        self.net = model.module
        self.target_kind, self.seed = target, seed
        size = tuple(model.input_size[1:])
        s = settings
        self.scores = nn.ModuleDict({
            label: nn.ModuleDict({
                **{f"degradation_{t}": Degradation(self.net, size, t, **s.degradation) for t in s.degradation_tiles},
                **{f"sensitivity_{t}": SensitivityN(self.net, size, t, **s.sensitivity) for t in s.sensitivity_tiles},
                **({"bbox": BoundingBoxRatio(**s.bbox)} if boxes else {}),
                **({"sanity": SanitySSIM(list(reversed(s.sanity_layers)), label in s.signed, s.win_size)}
                   if s.sanity_images and s.sanity_layers else {}),
                "seconds": MeanMetric(),  # wall seconds per image of the method's attribution
            })
            for label in self.labels
        })
        self.methods: dict[str, Attribution] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.grid_batch = grid_batch
        self.grid_maps: dict[str, torch.Tensor] = {}
        self.grid_target: torch.Tensor | None = None

    def on_test_start(self) -> None:
        """Build (and fit) the methods on this process's device; a method that does not support the model
        (NotImplementedError, e.g. PatternAttribution on a ResNet) is left out with a note."""
        self.net.eval()
        self.methods = {}
        for label in self.labels:
            try:
                self.methods[label] = self.make(label, self.zoo, False)
            except NotImplementedError as e:
                print(f"[table1] skipping {label}: {e}")

    def _target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return batch["label"] if self.target_kind == "label" else self.net(batch["image"]).argmax(1)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x, target = batch["image"], self._target(batch)
        sanity = batch["index"] < self.settings.sanity_images
        # Sensitivity-n's logit drops do not depend on the maps: one computation per tile size serves all rows
        drops = {name: metric.drops(x, target) for name, metric in self.scores[self.labels[0]].items()
                 if name.startswith("sensitivity")} if self.methods else {}
        for label, method in self.methods.items():
            start = time.perf_counter()
            with torch.enable_grad():
                maps = method.attribute_batch(batch, target)
            if maps.is_cuda:
                torch.cuda.synchronize(maps.device)
            seconds = time.perf_counter() - start
            for name, metric in self.scores[label].items():
                if name == "seconds":
                    metric.update(seconds / len(x), weight=len(x))
                elif name.startswith("degradation"):
                    metric.update(x, target, maps)
                elif name.startswith("sensitivity"):
                    metric.update(x, target, maps, drops=drops[name])
                elif name == "bbox":
                    metric.update(maps, batch["box_mask"])
            if "sanity" in self.scores[label] and sanity.any() and method.images_only:
                self._sanity(label, x[sanity], target[sanity])

    def _sanity(self, label: str, x: torch.Tensor, target: torch.Tensor) -> None:
        """Cascading randomisation of a copy of the model; adds the SSIM sums to this method's metric."""
        with torch.enable_grad():
            part = cascading_sanity_check(
                self.zoo, self.settings.sanity_layers, lambda m: self.make(label, m, True),
                [{"image": x, "label": target}], signed=label in self.settings.signed, seed=self.seed,
                win_size=self.settings.win_size,
            )
        metric = self.scores[label]["sanity"]
        metric.merge_state({key: value.to(metric.device) for key, value in part.metric_state.items()})

    def on_test_epoch_end(self) -> None:
        """Reduce every metric over processes (collective: runs on all ranks) into `results`."""
        for label in self.methods:
            metrics = self.scores[label]
            res: dict[str, Any] = {"degradation": {}, "sensitivity": {}}
            for name, metric in metrics.items():
                value = metric.compute()
                if name == "sanity":
                    res["sanity"] = (metric.layers, value.cpu())
                elif name in ("bbox", "seconds"):
                    res[name] = value.cpu()
                else:
                    kind, tile = name.split("_")
                    res[kind][int(tile)] = type(value)(*(v.cpu() for v in value))
            self.results[label] = res
        if self.grid_batch is not None and self.trainer.is_global_zero:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in self.grid_batch.items()}
            self.grid_target = self._target(batch)
            with torch.enable_grad():
                self.grid_maps = {label: m.attribute_batch(batch, self.grid_target).detach().cpu()
                                  for label, m in self.methods.items()}
