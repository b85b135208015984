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
from omegaconf import DictConfig
from torch import nn
from torch.nn.utils import prune

from infoflow.builders import build_datamodule, build_model, build_trainer, log_config
from infoflow.tasks import TASKS
from infoflow.tasks.classifier import ClassifierModule
from infoflow.utils.checkpoint import atomic_save, atomic_write


def require_trained(model: str, weights: Any, what: str, override: str) -> None:
    """Raise a clear error unless `weights` names trained weights for zoo model `model`."""
    w = str(weights)
    if w.lower() == "none" or (w == "default" and model != "shapesnet"):
        raise ValueError(
            f"{what} must be a trained classifier, but {override}={w} means an untrained {model}: pass "
            f"{override}=<path to its model.pt> (train one with: python train.py task=classifier model={model}; "
            f"it prints the path)"
        )


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
def run(cfg: DictConfig) -> dict[str, Any]:
    """Prune the trained `cfg.model` (`cfg.weights`) to `cfg.task.amount`, fine-tune, save ``model.pt``."""
    amount, rounds, epochs = cfg.task.amount, cfg.task.rounds, cfg.task.finetune_epochs
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise ValueError(f"task.amount is the fraction of conv/linear weights to prune, in (0, 1); got {amount!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"task.rounds must be an integer >= 1, got {rounds!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"task.finetune_epochs must be an integer >= 0, got {epochs!r}")
    require_trained(cfg.model.name, cfg.weights, "the model to prune", "weights")
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    layers = prunable(model.module)
    if not layers:
        raise ValueError(f"model {model.name!r} has no conv or linear layers to prune")
    total = sum(m.weight.numel() for _, m in layers)
    targets = round_targets(float(amount), rounds, total)

    module = ClassifierModule(model.module, model.num_classes, lr=cfg.task.lr, weight_decay=cfg.task.weight_decay)
    trainer = build_trainer(cfg, max_epochs=rounds * epochs)
    log_config(trainer, cfg)
    prune_to(layers, targets[0])  # round 1, before fine-tuning (and before a resumed checkpoint's masks load)
    if epochs > 0:
        trainer.callbacks.insert(0, IterativePruning(layers, targets, epochs))
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)
    prune_to(layers, targets[-1])  # without fine-tuning: every round at once, i.e. one-shot
    for _, m in layers:
        prune.remove(m, "weight")  # permanent: plain `weight` parameters with zeros
    metrics = trainer.test(module, datamodule=dm)[0]

    table = sparsity_table(model.module, model.layers)
    overall = float(table.sparsity.iloc[-1])
    metrics = {**metrics, "sparsity": overall}
    for logger in trainer.loggers:
        logger.log_metrics({"sparsity": overall, **{f"sparsity/{r.layer}": r.sparsity for r in table.iloc[:-1].itertuples()}})
        logger.save()
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        atomic_write(out / "sparsity.csv", lambda tmp: table.to_csv(tmp, index=False))
        path = atomic_save(module.model.state_dict(), out / "model.pt")
        print(table.to_string(index=False, formatters={"sparsity": "{:.4f}".format}))
        acc = metrics.get("test/acc", math.nan)
        print(f"sparsity {overall:.4f} ({table.zeros.iloc[-1]} of {total} conv/linear weights are zero), "
              f"test/acc {acc:.4f}: {out / 'sparsity.csv'}")
        print(f"weights: {path}  (use weights={path})")
    return metrics
