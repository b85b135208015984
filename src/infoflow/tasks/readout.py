"""Train a Readout Bottleneck: ``python train.py [model=vgg16] [layer=...] [beta=10] [data=...]`` (task=readout).

Loss ``CE(noisy logits, label) + beta * L_I/k`` with L_I/k the mean capacity per feature element (nats), so
`beta` is in units of 1/k. Logged on train and val (torchmetrics, reduced over DDP ranks):
- ``{stage}/ce``, ``{stage}/info`` (L_I/k, nats), ``{stage}/loss``, ``{stage}/top1``, ``{stage}/top5`` with
  the bottleneck (top-5 is top-min(5, classes));
- ``val/top1_orig``, ``val/top5_orig``: the unchanged classifier on the same images;
- ``val/objective``: ``val/ce + objective_beta * val/info``, the loss at a fixed reference beta, comparable
  between runs with different beta (the Optuna sweep minimises it);
- ``init/...``: the validation metrics of the untrained readout (alpha ~ 5), measured before training
  (the "Initial" column of the paper's table 4).

Every epoch a few validation heatmaps (bits per pixel) go to ``<run dir>/heatmaps/epoch_XXX/`` (``initial/``
before training) as PNG and CSV
(one H x W matrix per image), to ``heatmaps/heatmaps.csv`` (one summary row per image and epoch) and to the
loggers that take images (W&B). At the end, rank 0 writes ``readout.pt`` (for
``python evaluate.py method=readout readout_ckpt=...``) and ``metrics.json`` (the final metrics, read by
``experiments/collect_sweep.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from infoflow.builders import build_model, cache_path
from infoflow.data.base import ImageDataModule
from infoflow.errors import DataError
from infoflow.iba.bottleneck import capacity_to_heatmap
from infoflow.iba.readout import META_KEY, STATE_PREFIX, ReadoutBottleneck, check_meta, fit_statistics
from infoflow.tasks import TASKS
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.checkpoint import atomic_save, atomic_write
from infoflow.utils.tables import write_csv
from infoflow.utils.validation import check_beta
from infoflow.viz import plot_heatmap

_INITIAL_KEY = "readout_initial_metrics"


class ReadoutModule(pl.LightningModule):
    """Lightning training of a `ReadoutBottleneck` (only its readout network is trained).

    Args:
        readout: the readout bottleneck (its classifier stays frozen).
        beta: weight of L_I/k, >= 0 (units of 1/k; 0: plain cross-entropy through the noise).
        lr: Adam learning rate.
        meta: `readout.meta(data config)`, stored in every checkpoint and checked on resume.
        estimator_samples: training images for the feature statistics.
        estimator_caches: layer name -> file of its cached statistics (None: no cache).
        num_heatmaps: validation heatmaps written each epoch (0: none).
        objective_beta: reference beta of ``val/objective``.
        output_dir: where heatmaps go.
        class_names: names of the classes (for heatmap titles).
    """

    def __init__(
        self,
        readout: ReadoutBottleneck,
        beta: float,
        lr: float,
        meta: dict[str, Any],
        estimator_samples: int = 5000,
        estimator_caches: dict[str, Path] | None = None,
        num_heatmaps: int = 4,
        objective_beta: float = 10.0,
        output_dir: str | Path = ".",
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        beta = check_beta(beta)
        self.save_hyperparameters({"beta": beta, "lr": lr, "estimator_samples": estimator_samples,
                                   "num_heatmaps": num_heatmaps, "objective_beta": objective_beta})
        self.readout = readout
        self.meta = meta
        self.estimator_caches = estimator_caches
        self.output_dir = Path(output_dir)
        self.class_names = class_names
        k = readout.zoo.num_classes
        self.metrics = nn.ModuleDict()
        for stage in ("train", "val"):
            for name in ("ce", "info", "loss") + (("objective",) if stage == "val" else ()):
                self.metrics[f"{stage}_{name}"] = MeanMetric()
            for suffix in ("", "_orig") if stage == "val" else ("",):
                for top in (1, 5):
                    self.metrics[f"{stage}_top{top}{suffix}"] = MulticlassAccuracy(k, top_k=min(top, k), average="micro")
        self._heat_batch: dict[str, torch.Tensor] | None = None
        #: validation metrics of the untrained readout (``init/...``), kept in the checkpoints
        self.initial_metrics: dict[str, float] = {}

    @property
    def _initial(self) -> bool:
        """Whether this is the validation of the untrained readout (`trainer.validate` before `fit`)."""
        return self.trainer.state.fn == TrainerFn.VALIDATING

    def on_fit_start(self) -> None:
        self._ensure_statistics()

    def on_validation_start(self) -> None:
        self._ensure_statistics()

    def _ensure_statistics(self) -> None:
        """Estimate (or load from the cache) the feature statistics, unless set already or restored.

        All ranks share the work and end with identical statistics (see `fit_statistics`).
        """
        if bool(self.readout.fitted):
            return
        caches = self.estimator_caches
        cached = self.trainer.strategy.broadcast(
            sorted(n for n, p in caches.items() if Path(p).is_file()) if caches else []
        )
        estimators = fit_statistics(
            self.readout, self.trainer.datamodule.train_dataloader(), self.hparams.estimator_samples, caches,
            cached, self.global_rank, self.trainer.world_size,
        )
        self.readout.set_statistics(estimators)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Update and log the metrics of `stage`; return the batch's mean loss CE + beta * L_I/k."""
        out = self.readout(batch["image"])
        assert out.noisy_logits is not None
        label = batch["label"]
        ce = F.cross_entropy(out.noisy_logits, label, reduction="none")
        info = out.info
        loss = ce + self.hparams.beta * info
        values = {"ce": ce, "info": info, "loss": loss}
        if stage == "val":
            values["objective"] = ce + self.hparams.objective_beta * info
        for name, value in values.items():
            self.metrics[f"{stage}_{name}"].update(value.detach())
        for top in (1, 5):
            self.metrics[f"{stage}_top{top}"].update(out.noisy_logits.detach(), label)
            if stage == "val":
                self.metrics[f"val_top{top}_orig"].update(out.logits, label)
        prefix = "init" if stage == "val" and self._initial else stage
        for key, metric in self.metrics.items():
            if key.startswith(f"{stage}_"):
                self.log(f"{prefix}/{key[len(stage) + 1:]}", metric, on_step=False, on_epoch=True,
                         prog_bar=key in ("train_info", "val_info", "val_top1"))
        return loss.mean()

    def training_step(self, batch: dict[str, torch.Tensor], _idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], idx: int) -> None:
        self._step(batch, "val")
        if idx == 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            n = self.hparams.num_heatmaps
            self._heat_batch = {k: v[:n] for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def on_validation_epoch_end(self) -> None:
        if self._heat_batch is not None and self.hparams.num_heatmaps > 0:
            self._write_heatmaps(self._heat_batch)
        self._heat_batch = None

    @torch.no_grad()
    def _write_heatmaps(self, batch: dict[str, torch.Tensor]) -> None:
        """PNG + CSV matrix per image, summary rows in heatmaps.csv, and images to W&B."""
        x, label = batch["image"], batch["label"]
        heat = capacity_to_heatmap(self.readout(x, noisy=False).capacity, tuple(x.shape[-2:]))
        epoch = -1 if self._initial else self.current_epoch
        out = self.output_dir / "heatmaps" / ("initial" if self._initial else f"epoch_{epoch:03d}")
        dm = self.trainer.datamodule
        images = dm.denormalize(x) if hasattr(dm, "denormalize") else x
        rows, pngs = [], []
        for i in range(x.shape[0]):
            name = self.class_names[int(label[i])] if self.class_names else str(int(label[i]))
            stem = f"{i:02d}_{name}"
            atomic_write(out / f"{stem}.csv", lambda p, h=heat[i]: np.savetxt(p, h.cpu().numpy(), "%.5g", ","))
            title = f"readout @ {self.meta['model']}/{self.meta['layer']}  label: {name}  " + (
                "untrained" if epoch < 0 else f"epoch {epoch}")
            pngs.append(plot_heatmap(images[i], heat[i], title, "bits/pixel", out / f"{stem}.png"))
            row = {"epoch": epoch, "step": self.global_step, "index": i, "label": int(label[i]),
                   "total_bits": float(heat[i].sum())}
            if "mask" in batch:
                m = batch["mask"][i].bool()
                row["mean_inside"], row["mean_outside"] = float(heat[i][m].mean()), float(heat[i][~m].mean())
            rows.append(row)
        summary = self.output_dir / "heatmaps" / "heatmaps.csv"
        old = pd.read_csv(summary) if summary.is_file() else None
        write_csv(pd.concat([old, pd.DataFrame(rows)]) if old is not None else pd.DataFrame(rows), summary)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/heatmaps", images=[str(p) for p in pngs],
                                 caption=[p.stem for p in pngs], step=self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.readout.net.parameters(), lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.meta
        checkpoint[_INITIAL_KEY] = self.initial_metrics

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if META_KEY not in checkpoint:
            raise DataError("the checkpoint to resume from is not a Readout Bottleneck checkpoint")
        check_meta(checkpoint[META_KEY], self.meta, "to resume from")
        self.initial_metrics = checkpoint.get(_INITIAL_KEY, {})

    def export(self, path: str | Path) -> Path:
        """Write the readout alone (metadata + weights), loadable by `ReadoutIBA.load`, atomically."""
        state = {STATE_PREFIX + k: v.detach().cpu() for k, v in self.readout.state_dict().items()}
        return atomic_save({META_KEY: self.meta, "state_dict": state}, path)


@TASKS.register("readout")
class ReadoutTask(TrainingTask):
    """Train a Readout Bottleneck for `cfg.model` at `cfg.task.layer` on `cfg.data`; write ``readout.pt`` and
    ``metrics.json``. Before a fresh fit, the untrained readout is validated (the ``init/...`` metrics)."""

    test = False

    def build_module(self, dm: ImageDataModule) -> ReadoutModule:
        cfg, task = self.cfg, self.cfg.task
        model = build_model(cfg, dm)
        readout = ReadoutBottleneck(model, str(task.layer), list(task.readout_layers), sigma=task.sigma,
                                    hidden=task.hidden, init_bias=task.init_bias, max_alpha=task.max_alpha)
        data = OmegaConf.to_container(cfg.data, resolve=True)
        assert isinstance(data, dict)
        return ReadoutModule(
            readout, beta=task.beta, lr=task.lr, meta=readout.meta(data), estimator_samples=task.estimator_samples,
            estimator_caches={name: cache_path(cfg, "estimators", name, samples=task.estimator_samples)
                              for name in readout.stat_layers},
            num_heatmaps=task.num_heatmaps, objective_beta=task.objective_beta, output_dir=cfg.paths.output_dir,
            class_names=list(dm.class_names),
        )

    def trainer_overrides(self) -> dict[str, Any]:
        return {"inference_mode": False}  # the metric states of the initial validation must stay usable in the fit

    def before_fit(self, trainer: pl.Trainer, module: ReadoutModule, dm: ImageDataModule, resuming: bool) -> None:
        if not resuming:
            module.initial_metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=dm)[0].items()}

    def save(self, trainer: pl.Trainer, module: ReadoutModule, metrics: dict[str, Any]) -> None:
        cfg, out = self.cfg, Path(self.cfg.paths.output_dir)
        path = module.export(out / "readout.pt")
        record = {"beta": float(cfg.task.beta), "lr": float(cfg.task.lr), "model": cfg.model.name, "layer": cfg.task.layer,
                  "weights": str(cfg.weights), "epochs": trainer.current_epoch, "global_step": trainer.global_step,
                  "metrics": metrics, "initial": module.initial_metrics}
        atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(record, indent=2)))
        print(f"readout: {path}  (python evaluate.py method=readout model={cfg.model.name} layer={cfg.task.layer} "
              f"readout_ckpt={path})")
