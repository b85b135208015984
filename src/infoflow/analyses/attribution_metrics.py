"""Attribution methods x metrics as a Lightning test loop, so the evaluation spreads over GPUs and nodes.

`AttributionEvaluation.test_step` computes every method's maps for its batch and updates that method's
`MethodMetrics` (degradation and Sensitivity-n per tile size, bounding-box and mask ratios, pointing games,
sparseness, and on subsets insertion/deletion, ROAD, infidelity, max-sensitivity and the random-logit test)
and its cascading sanity-check SSIM; Sensitivity-n's perturbed forward passes do not depend on the maps, so
they run once per batch for all methods. The metrics' sum states reduce across processes in
`on_test_epoch_end`, where the results land in `results` (on every rank). `evaluation_loader` gives the first
images of the test split, each with its global ``index``, split over processes without padding, so 1 and N
processes see exactly the same images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from infoflow.interface import Attribution
from infoflow.metrics import SanitySSIM, cascading_sanity_check
from infoflow.metrics.suite import MethodMetrics, MetricSettings, merge
from infoflow.models.zoo import ZooModel

__all__ = ["AttributionEvaluation", "MethodFactory", "MetricSettings"]

#: builds a method for a model: ``make(label, model, for_sanity) -> Attribution`` (fitted)
MethodFactory = Callable[[str, ZooModel, bool], Attribution]


class AttributionEvaluation(pl.LightningModule):
    """Evaluates the methods `labels` (built on each process by `make`, once the model is on its device).

    Args:
        model: the zoo model to explain; its network is a submodule, so Lightning moves it.
        labels: one name per method (table rows).
        make: ``make(label, model, for_sanity)`` builds and fits a method (for_sanity: for a randomised copy).
        settings: the metrics.
        boxes: whether batches carry ``box_mask`` (else no bounding-box ratio).
        masks: whether batches carry the object ``mask`` (else no mask ratio).
        target: ``label`` or ``pred``: the class explained.
        seed: seed of the sanity check's re-initialisation.
        grid_batch: a batch whose maps rank 0 keeps for a heatmap grid (`grid_maps`, `grid_target`).
    Attributes:
        results: after the test loop: {label: {"degradation": {tile: DegradationResult},
            "sensitivity": {tile: SensitivityNResult}, "sanity": (layers, ssim), "seconds": tensor (mean wall
            seconds per image of the attribution), and every other `MethodMetrics.results` entry by name
            ("bbox", "mask_ratio", "pointing", "energy_pointing", "sparseness", "insertion_deletion", "road",
            "infidelity", "max_sensitivity", "random_logit"; None where no image was scored)}}.
    """

    def __init__(self, model: ZooModel, labels: Sequence[str], make: MethodFactory, settings: MetricSettings,
                 boxes: bool, masks: bool = False, target: str = "label", seed: int = 0,
                 grid_batch: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.zoo, self.labels, self.make, self.settings = model, list(labels), make, settings
        self.net = model.module
        self.target_kind, self.seed = target, seed
        s = settings
        self.scores = nn.ModuleDict({
            label: MethodMetrics(self.net, tuple(model.input_size[1:]), s, signed=label in s.signed, boxes=boxes,
                                 masks=masks, num_classes=model.num_classes)
            for label in self.labels
        })
        self.extra = nn.ModuleDict({
            label: nn.ModuleDict({
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
        drops = {name: metric.drops(x, target) for name, metric in self.scores[self.labels[0]].metrics.items()
                 if name.startswith("sensitivity")} if self.methods else {}
        for label, method in self.methods.items():
            start = time.perf_counter()
            with torch.enable_grad():
                maps = method.attribute_batch(batch, target)
            if maps.is_cuda:
                torch.cuda.synchronize(maps.device)
            seconds = time.perf_counter() - start
            self.extra[label]["seconds"].update(seconds / len(x), weight=len(x))
            self.scores[label].update(method, batch, target, maps, drops)
            if "sanity" in self.extra[label] and sanity.any() and method.images_only:
                self._sanity(label, x[sanity], target[sanity])

    def _sanity(self, label: str, x: torch.Tensor, target: torch.Tensor) -> None:
        """Cascading randomisation of a copy of the model; adds the SSIM sums to this method's metric."""
        with torch.enable_grad():
            part = cascading_sanity_check(
                self.zoo, self.settings.sanity_layers, lambda m: self.make(label, m, True),
                [{"image": x, "label": target}], signed=label in self.settings.signed, seed=self.seed,
                win_size=self.settings.win_size,
            )
        merge(self.extra[label]["sanity"], part)

    def on_test_epoch_end(self) -> None:
        """Reduce every metric over processes (collective: runs on all ranks) into `results`."""
        for label in self.methods:
            res: dict[str, Any] = {"degradation": {}, "sensitivity": {}}
            for name, value in self.scores[label].results().items():
                kind, _, tile = name.partition("_")
                if kind in ("degradation", "sensitivity"):
                    res[kind][int(tile)] = value
                else:
                    res[name] = value
            extra = self.extra[label]
            if "sanity" in extra:
                res["sanity"] = (extra["sanity"].layers, extra["sanity"].compute().cpu())
            res["seconds"] = extra["seconds"].compute().cpu()
            self.results[label] = res
        if self.grid_batch is not None and self.trainer.is_global_zero:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in self.grid_batch.items()}
            self.grid_target = self._target(batch)
            with torch.enable_grad():
                self.grid_maps = {label: m.attribute_batch(batch, self.grid_target).detach().cpu()
                                  for label, m in self.methods.items()}
