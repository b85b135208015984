"""Helpers shared by the training tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from infoflow.errors import ConfigError
from infoflow.models.entry import MODELS
from infoflow.utils.checkpoint import atomic_save


def require_trained(model: str, weights: Any, what: str, override: str) -> None:
    """Raise a `ConfigError` unless `weights` names trained weights for zoo model `model` (``default`` is
    trained when the model's registry entry has default weights)."""
    w = str(weights)
    if w.lower() == "none" or (w == "default" and MODELS.get(model)().default_weights is None):
        raise ConfigError(
            f"{what} must be a trained classifier, but {override}={w} means an untrained {model}: pass "
            f"{override}=<path to its model.pt> (train one with: python train.py task=classifier model={model}; "
            f"it prints the path)"
        )


def save_weights(module: nn.Module, output_dir: str | Path) -> Path:
    """Write `module`'s state dict to ``<output_dir>/model.pt`` (loadable with ``weights=``) and say where."""
    path = atomic_save(module.state_dict(), Path(output_dir) / "model.pt")
    print(f"weights: {path}  (use weights={path})")
    return path


class StagedSteps:
    """Lightning's train/val/test steps as one ``_step(batch, stage)`` of the module (a mix-in)."""

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], _idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], _idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], _idx: int) -> None:
        self._step(batch, "test")
