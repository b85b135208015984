"""``attribution_metrics``: degradation, Sensitivity-n and bounding-box ratio of attribution maps during training.

Every few epochs, on the fixed evaluation subset (`callbacks.subset`), each method's maps of the network being
trained are scored by a `infoflow.metrics.suite.MethodMetrics` (the torchmetrics of Table 1: sum states,
reduced over DDP processes):

- degradation (`Degradation`): the MoRF and LeRF curves and the area between them, tiles of
  ``degradation_tile`` pixels;
- Sensitivity-n (`SensitivityN`): the correlation curve over n, tiles of ``sensitivity_tile`` pixels;
- the bounding-box ratio (`BoundingBoxRatio`): ``bbox=null`` when the data has boxes, ``true`` requires them.

Methods: ``methods`` (a list of method configs, ``{name: gradient}``, ``{name: gradcam, layer: null}``, ...);
null means the task's own: the readout being trained for ``task=readout``, else gradient and Grad-CAM of the
network being trained. A method that fits something to data (IBA's feature statistics) is fitted on the
training split at every evaluation (its cost grows with its ``estimator_samples``). The class explained is
the label.

Writes ``callbacks/attribution_metrics.csv`` (long format: epoch, method, curve, x, y) and, at the end,
``callbacks/attribution_{degradation,sensitivity}_curves.png`` and ``attribution_metric_epoch.png``; logs
the scalars ``attribution/<method>/{degradation,sensitivity_mean,bbox,seconds_per_image}`` and, to W&B, a
table, MoRF/LeRF and Sensitivity-n line-series charts and the metric x epoch image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric

from infoflow.attribution import METHODS
from infoflow.callbacks.base import EvaluationCallback
from infoflow.callbacks.loggers import line_series, log_scalars, log_wandb, wandb_image, wandb_table
from infoflow.callbacks.network import trained_network
from infoflow.data.base import ImageDataModule
from infoflow.errors import ConfigError
from infoflow.iba.readout import ReadoutIBA
from infoflow.interface import Attribution
from infoflow.metrics.suite import MethodMetrics, MetricSettings
from infoflow.models.zoo import ZooModel
from infoflow.viz import plot_curves, plot_matrix

#: the methods of classifier-type tasks when `methods` is null
DEFAULT_METHODS = ({"name": "gradient"}, {"name": "gradcam"})
#: scalar curves of the metric x epoch image and the logged scalars
_SCALARS = ("degradation", "sensitivity_mean", "bbox", "seconds_per_image")


class AttributionMetricsCallback(EvaluationCallback):
    """Attribution metrics during training (module docstring).

    Args:
        model, every_n_epochs, at_start, num_images, split, seed, output_dir: see `EvaluationCallback`.
        methods: method configs (``name`` plus the method's keyword arguments); None: the task's own.
        degradation_tile, degradation: tile side (pixels) and `Degradation` keyword arguments.
        sensitivity_tile, sensitivity: tile side (pixels) and `SensitivityN` keyword arguments.
        bbox: None (when the data has boxes) | True (required) | False.
    """

    name = "attribution_metrics"

    def __init__(self, model: str, every_n_epochs: int = 2, at_start: bool = False, num_images: int = 8,
                 split: str = "val", seed: int = 0, output_dir: str | None = None,
                 methods: Sequence[dict[str, Any]] | None = None, degradation_tile: int = 8,
                 degradation: dict[str, Any] | None = None, sensitivity_tile: int = 8,
                 sensitivity: dict[str, Any] | None = None, bbox: bool | None = None) -> None:
        super().__init__(model, every_n_epochs, at_start, num_images, split, seed, output_dir)
        self.method_cfgs = [dict(m) for m in methods] if methods is not None else None
        for m in self.method_cfgs or []:
            if "name" not in m:
                raise ConfigError(f"callbacks.attribution_metrics.methods: every entry needs a name, got {m}")
            METHODS.get(m["name"])  # unknown names: the registry's one-line error listing the methods
        self.degradation_tile, self.sensitivity_tile = int(degradation_tile), int(sensitivity_tile)
        self.degradation_kw = {"num_points": 21, **dict(degradation or {})}
        self.sensitivity_kw = {"num_n": 8, "num_subsets": 20, "seed": self.seed, **dict(sensitivity or {})}
        self.want_bbox = bbox
        self.use_bbox = False
        self.labels: list[str] = []

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule) -> None:
        if self.want_bbox and not dm.has_boxes:
            raise ConfigError(f"callbacks.attribution_metrics.bbox=true needs bounding boxes, but {type(dm).__name__} "
                              "has none: set callbacks.attribution_metrics.bbox=null|false")
        self.use_bbox = dm.has_boxes if self.want_bbox is None else bool(self.want_bbox)
        zoo = trained_network(pl_module, self.model_name, dm)
        self.labels = list(self._methods(pl_module, zoo))

    def _methods(self, pl_module: pl.LightningModule, zoo: ZooModel) -> dict[str, Attribution]:
        """label -> method (unfitted); the readout being trained when `methods` is null on task=readout."""
        readout = getattr(pl_module, "readout", None)
        if self.method_cfgs is None and readout is not None:
            return {"readout": ReadoutIBA(readout)}
        out = {}
        for cfg in self.method_cfgs or [dict(m) for m in DEFAULT_METHODS]:
            kwargs = dict(cfg)
            name = kwargs.pop("name")
            label = kwargs.pop("label", None) or name
            try:
                out[label] = METHODS.get(name)(zoo, **kwargs)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"callbacks.attribution_metrics.methods: {name}: {e}") from None
        return out

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule,
                epoch: int) -> pd.DataFrame:
        zoo = trained_network(pl_module, self.model_name, dm)
        zoo.module.eval()
        device = pl_module.device
        methods = self._methods(pl_module, zoo)
        for method in methods.values():
            if method.requires_fit:
                dm.setup("fit")
                method.fit(dm.train_dataloader())
        settings = self._settings()
        scores = {label: MethodMetrics(zoo.module, tuple(zoo.input_size[1:]), settings, boxes=self.use_bbox,
                                       num_classes=zoo.num_classes).to(device) for label in methods}
        seconds = {label: MeanMetric().to(device) for label in methods}
        deg_key, sens_key = f"degradation_{self.degradation_tile}", f"sensitivity_{self.sensitivity_tile}"
        mine = self.shard(trainer)
        batch = {k: v[mine].to(device) for k, v in self.subset.items()}
        x, target = batch["image"], batch["label"]
        if len(mine):
            drops = {sens_key: scores[self.labels[0]].metrics[sens_key].drops(x, target)}
            for label, method in methods.items():
                start = time.perf_counter()
                maps = method.attribute_batch(batch, target).detach()
                seconds[label].update(torch.tensor((time.perf_counter() - start) / len(x)), weight=len(x))
                scores[label].update(method, batch, target, maps, drops=drops)
        rows: list[dict[str, Any]] = []
        for label, metrics in scores.items():  # results() reduces over processes: every rank calls it
            results = metrics.results()
            deg, sens = results[deg_key], results[sens_key]
            for curve, ys in (("morf", deg.morf), ("lerf", deg.lerf)):
                rows += [{"method": label, "curve": curve, "x": float(f), "y": float(y)}
                         for f, y in zip(deg.fractions, ys, strict=True)]
            rows += [{"method": label, "curve": "sensitivity", "x": float(n), "y": float(c)}
                     for n, c in zip(sens.n, sens.correlation, strict=True)]
            scalars = {"degradation": float(deg.score), "sensitivity_mean": float(sens.correlation.mean()),
                       "seconds_per_image": float(seconds[label].compute())}
            if self.use_bbox:
                bbox = results.get("bbox")
                scalars["bbox"] = float(bbox) if bbox is not None else float("nan")
            rows += [{"method": label, "curve": k, "x": float("nan"), "y": v} for k, v in scalars.items()]
        return pd.DataFrame(rows)

    def _settings(self) -> MetricSettings:
        """The `MetricSettings` of this callback: degradation and Sensitivity-n at one tile size each, and
        the bounding-box ratio when used; none of Table 1's expensive or sanity metrics."""
        return MetricSettings(
            degradation_tiles=(self.degradation_tile,), degradation=self.degradation_kw,
            sensitivity_tiles=(self.sensitivity_tile,), sensitivity=self.sensitivity_kw,
            bbox={} if self.use_bbox else None, mask_ratio=None, pointing=None, sparseness=False,
            insertion_deletion=None, road=None, infidelity=None, max_sensitivity=None,
            subset_images=0, sanity_images=0, random_logit=False, seed=self.seed,
        )

    # ---- outputs -----------------------------------------------------------------------------------
    def _scalar_rows(self) -> pd.DataFrame:
        return self.history[self.history["curve"].isin(_SCALARS)]

    def log_epoch(self, trainer: pl.Trainer, table: pd.DataFrame, epoch: int) -> None:
        scalars = table[table["curve"].isin(_SCALARS)]
        log_scalars(trainer, {f"attribution/{r.method}/{r.curve}": r.y for r in scalars.itertuples(index=False)})
        deg = table[table["curve"].isin(("morf", "lerf"))].assign(series=lambda d: d["method"] + " " + d["curve"])
        sens = table[table["curve"] == "sensitivity"]
        log_wandb(trainer, {
            "attribution_metrics/table": wandb_table(self.history),
            "attribution_metrics/degradation_curves": line_series(
                deg, "x", "y", "series", f"MoRF / LeRF at epoch {epoch} ({self.degradation_tile}px tiles)",
                "fraction of tiles replaced", prefix=""),
            "attribution_metrics/sensitivity_n": line_series(
                sens, "x", "y", "method", f"Sensitivity-n at epoch {epoch} ({self.sensitivity_tile}px tiles)",
                "n (tiles)", prefix=""),
            "attribution_metrics/metric_epoch": wandb_image(self._heatmap(), "metric x epoch"),
        })

    def _heatmap(self) -> Path:
        rows = self._scalar_rows().assign(row=lambda d: d["method"] + " " + d["curve"])
        pivot = rows.pivot_table(index="row", columns="epoch", values="y", dropna=False)
        return plot_matrix(pivot.to_numpy(dtype=float), list(pivot.index), [int(c) for c in pivot.columns],
                           self.out_dir / "attribution_metric_epoch.png",
                           f"attribution metrics of {self.model_name} by epoch", "value")

    def figures(self) -> list[Path]:
        paths = [self._heatmap()]
        for kind, curves, xlabel in (("degradation", ("morf", "lerf"), "fraction of tiles replaced"),
                                     ("sensitivity", ("sensitivity",), "n (tiles)")):
            sub = self.history[self.history["curve"].isin(curves)]
            lines = {f"{m} {c} e{e}": (g["x"].to_numpy(), g["y"].to_numpy())
                     for (m, c, e), g in sub.groupby(["method", "curve", "epoch"], sort=True)}
            paths.append(plot_curves(lines, self.out_dir / f"attribution_{kind}_curves.png", xlabel,
                                     "normalised probability" if kind == "degradation" else "correlation",
                                     f"{kind} over training", logx=kind == "sensitivity"))
        return paths
