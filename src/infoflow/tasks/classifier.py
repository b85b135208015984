"""Train a zoo classifier on a datamodule: ``python train.py task=classifier``.

With ``task.save_every_epoch=true`` the weights after every epoch are kept as plain state dicts,
``epochs/epoch_000.pt`` (the initialisation) ... ``epochs/epoch_<N>.pt`` (after N epochs), each loadable
with ``weights=<path>``, so that ``analysis.compare`` can follow a network over training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from infoflow.builders import build_model
from infoflow.data.base import ImageDataModule
from infoflow.tasks import TASKS
from infoflow.tasks.common import StagedSteps, save_weights
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.checkpoint import atomic_save


class ClassifierModule(StagedSteps, pl.LightningModule):
    """Cross-entropy training of `model` with Adam and a cosine learning-rate schedule.

    Logs ``{train,val,test}/loss`` and ``{train,val,test}/acc`` (top-1).
    """

    def __init__(self, model: nn.Module, num_classes: int, lr: float = 2e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.acc = nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in ("train", "val", "test")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        # zoo models come in eval mode and Lightning keeps each module's mode: train batch norms and dropout
        self.model.train()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self.acc[f"{stage}_acc"](logits, batch["label"])
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", sync_dist=stage != "train")
        self.log(f"{stage}/acc", self.acc[f"{stage}_acc"], prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        steps = self.trainer.estimated_stepping_batches
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=int(steps)), "interval": "step"}}


class SaveEveryEpoch(pl.Callback):
    """Write the model's weights to ``<dirpath>/epoch_<NNN>.pt`` before training and after every epoch.

    NNN counts the epochs trained (000: the initial weights). Plain state dicts, written atomically by rank 0.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def _save(self, trainer: pl.Trainer, module: ClassifierModule, epochs: int) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            state = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}
            atomic_save(state, self.dirpath / f"epoch_{epochs:03d}.pt")

    def on_train_start(self, trainer: pl.Trainer, module: ClassifierModule) -> None:
        if trainer.current_epoch == 0:  # not when resuming
            self._save(trainer, module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: ClassifierModule) -> None:
        self._save(trainer, module, trainer.current_epoch + 1)


@TASKS.register("classifier")
class ClassifierTask(TrainingTask):
    """Train `cfg.model` on `cfg.data` from `cfg.weights` (the task's default ``none``: from scratch;
    ``default``: from the model's trained default weights); save ``model.pt``."""

    def build_module(self, dm: ImageDataModule) -> ClassifierModule:
        cfg = self.cfg
        model = build_model(cfg, dm)
        return ClassifierModule(model.module, model.num_classes, lr=cfg.task.lr, weight_decay=cfg.task.weight_decay)

    def callbacks(self) -> list[pl.Callback]:
        if self.cfg.task.get("save_every_epoch"):
            return [SaveEveryEpoch(Path(self.cfg.paths.output_dir) / "epochs")]
        return []

    def save(self, trainer: pl.Trainer, module: ClassifierModule, metrics: dict[str, Any]) -> None:
        path = save_weights(module.model, self.cfg.paths.output_dir)
        if self.cfg.task.get("save_every_epoch"):
            print(f"weights after every epoch: {path.parent / 'epochs'}/epoch_<NNN>.pt  (000: the initialisation)")
