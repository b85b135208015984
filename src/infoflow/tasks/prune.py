"""Magnitude pruning (Han et al. 2016) of a trained classifier: ``python train.py task=prune weights=<model.pt>``.

The conv and linear weights of all layers are pruned together (global unstructured L1 pruning,
`torch.nn.utils.prune.global_unstructured`): the `task.amount` fraction of smallest-magnitude weights becomes
zero. With ``task.rounds`` > 1 this is reached iteratively: round k prunes to 1 - (1 - amount)^(k/rounds)
(the same fraction of the remaining weights each round), each round followed by ``task.finetune_epochs``
epochs of fine-tuning with the masks in place (pruned weights stay zero). Each round's target is a whole
number of weights, round(fraction * total), so the final sparsity is exactly round(amount * total) / total.
The masks are then made permanent and the pruned network saved as ``model.pt``, a plain state dict of
the same architecture that every command loads with ``weights=<run dir>/model.pt``. ``sparsity.csv`` lists
the fraction of zero weights per pruned layer and overall.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn.utils import prune

from infoflow.builders import build_model
from infoflow.data.base import ImageDataModule
from infoflow.errors import ConfigError
from infoflow.tasks import TASKS
from infoflow.tasks.classifier import ClassifierModule
from infoflow.tasks.common import require_trained, save_weights
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.checkpoint import atomic_write


def prunable(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every conv and linear layer, in definition order."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def _weight(m: nn.Module) -> torch.Tensor:
    """The layer's current effective weight (masked, if pruned; `m.weight` may be one step stale then)."""
    if prune.is_pruned(m) and hasattr(m, "weight_mask"):
        return (m.weight_orig * m.weight_mask).detach()
    return m.weight.detach()


def num_pruned(layers: list[tuple[str, nn.Module]]) -> int:
    """How many weights the masks remove (0 before pruning)."""
    return sum(int((m.weight_mask == 0).sum()) for _, m in layers if hasattr(m, "weight_mask"))


def round_targets(amount: float, rounds: int, total: int) -> list[int]:
    """Cumulative numbers of pruned weights after each round: 1 - (1 - amount)^(k/rounds) of `total`."""
    targets = [round((1 - (1 - amount) ** (k / rounds)) * total) for k in range(1, rounds + 1)]
    targets[-1] = round(amount * total)
    return targets


def prune_to(layers: list[tuple[str, nn.Module]], target: int) -> None:
    """Globally prune the smallest-magnitude unpruned weights until `target` weights are pruned in all."""
    params = [(m, "weight") for _, m in layers]
    extra = target - num_pruned(layers)
    # an int amount counts weights among the still unpruned ones (PruningContainer); scores: fresh magnitudes
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=max(extra, 0),
                              importance_scores={(m, "weight"): _weight(m) for m, _ in params})


def sparsity_table(module: nn.Module, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Fraction of zero weights of each conv/linear layer and overall (row ``all``)."""
    names = {v: k for k, v in (names or {}).items()}
    rows = []
    for path, m in prunable(module):
        w = _weight(m)
        rows.append({"layer": path, "name": names.get(path, ""), "type": type(m).__name__,
                     "zeros": int((w == 0).sum()), "weights": w.numel()})
    table = pd.DataFrame(rows)
    total = {"layer": "all", "name": "", "type": "", "zeros": int(table.zeros.sum()), "weights": int(table.weights.sum())}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    table["sparsity"] = table.zeros / table.weights
    return table


class IterativePruning(pl.Callback):
    """Prune to the current round's target at the start of every epoch (round = epoch // epochs_per_round).

    Idempotent: it prunes only what is missing, so a resumed run (masks restored from the checkpoint) goes on.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], targets: list[int], epochs_per_round: int) -> None:
        self.layers, self.targets, self.epochs_per_round = layers, targets, epochs_per_round

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        k = min(trainer.current_epoch // self.epochs_per_round, len(self.targets) - 1)
        if num_pruned(self.layers) < self.targets[k]:
            prune_to(self.layers, self.targets[k])
        total = sum(m.weight_mask.numel() for _, m in self.layers)
        module.log("prune/sparsity", num_pruned(self.layers) / total, on_step=False, on_epoch=True)


@TASKS.register("prune")
class PruneTask(TrainingTask):
    """Prune the trained `cfg.model` (`cfg.weights`) to `cfg.task.amount`, fine-tune, save ``model.pt``."""

    def check(self) -> None:
        amount, rounds, epochs = self.cfg.task.amount, self.cfg.task.rounds, self.cfg.task.finetune_epochs
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
            raise ConfigError(f"task.amount is the fraction of conv/linear weights to prune, in (0, 1); got {amount!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"task.rounds must be an integer >= 1, got {rounds!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"task.finetune_epochs must be an integer >= 0, got {epochs!r}")
        require_trained(self.cfg.model.name, self.cfg.weights, "the model to prune", "weights")

    def build_module(self, dm: ImageDataModule) -> ClassifierModule:
        cfg = self.cfg
        self.model = build_model(cfg, dm)
        self.layers = prunable(self.model.module)
        if not self.layers:
            raise ConfigError(f"model {self.model.name!r} has no conv or linear layers to prune")
        self.total = sum(m.weight.numel() for _, m in self.layers)
        self.targets = round_targets(float(cfg.task.amount), cfg.task.rounds, self.total)
        return ClassifierModule(self.model.module, self.model.num_classes, lr=cfg.task.lr,
                                weight_decay=cfg.task.weight_decay)

    def trainer_overrides(self) -> dict[str, Any]:
        return {"max_epochs": self.cfg.task.rounds * self.cfg.task.finetune_epochs}

    def callbacks(self) -> list[pl.Callback]:
        epochs = self.cfg.task.finetune_epochs
        return [IterativePruning(self.layers, self.targets, epochs)] if epochs > 0 else []

    def fit(self, trainer: pl.Trainer, module: pl.LightningModule, dm: ImageDataModule, ckpt_path: str | None) -> None:
        prune_to(self.layers, self.targets[0])  # round 1, before fine-tuning (and before a resumed checkpoint's masks load)
        if self.cfg.task.finetune_epochs > 0:
            super().fit(trainer, module, dm, ckpt_path)
        prune_to(self.layers, self.targets[-1])  # without fine-tuning: every round at once, i.e. one-shot
        for _, m in self.layers:
            prune.remove(m, "weight")  # permanent: plain `weight` parameters with zeros

    def metrics(self, trainer: pl.Trainer, module: pl.LightningModule, dm: ImageDataModule) -> dict[str, Any]:
        self.table = sparsity_table(self.model.module, self.model.layers)
        overall = float(self.table.sparsity.iloc[-1])
        for logger in trainer.loggers:
            logger.log_metrics({"sparsity": overall,
                                **{f"sparsity/{r.layer}": r.sparsity for r in self.table.iloc[:-1].itertuples()}})
            logger.save()
        return {**super().metrics(trainer, module, dm), "sparsity": overall}

    def save(self, trainer: pl.Trainer, module: ClassifierModule, metrics: dict[str, Any]) -> None:
        out, table = Path(self.cfg.paths.output_dir), self.table
        atomic_write(out / "sparsity.csv", lambda tmp: table.to_csv(tmp, index=False))
        print(table.to_string(index=False, formatters={"sparsity": "{:.4f}".format}))
        print(f"sparsity {metrics['sparsity']:.4f} ({table.zeros.iloc[-1]} of {self.total} conv/linear weights are "
              f"zero), test/acc {metrics.get('test/acc', math.nan):.4f}: {out / 'sparsity.csv'}")
        save_weights(module.model, out)
