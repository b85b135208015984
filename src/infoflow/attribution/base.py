"""One small interface for every attribution method: ``attribute(inputs, target) -> (N, H, W)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch

from infoflow.models.zoo import ZooModel
from infoflow.registry import Registry


class Attribution(ABC):
    """An attribution method for one zoo model (Captum-style).

    Subclasses implement `_attribute`; `attribute` validates the inputs first.
    """

    #: unit of the heatmap values, shown on colour bars and in tables
    unit: str = "a.u."

    def __init__(self, model: ZooModel) -> None:
        self.model = model

    def fit(self, dataloader: Iterable[dict[str, torch.Tensor]]) -> Attribution:
        """Fit whatever the method estimates from data (IBA's feature statistics, PatternAttribution's
        patterns, ...) on batches of the datamodule format. Methods that need nothing return at once."""
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.module.parameters()).device

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | int | list[int]) -> torch.Tensor:
        """Attribution maps.

        Args:
            inputs: images (N, C, H, W), normalised as the model expects.
            target: class index per image (N,), or one int for all.
        Returns:
            (N, H, W) float tensor on the inputs' device, in `self.unit`.
        """
        self.model.check_inputs(inputs)
        target = as_target(target, inputs.shape[0], inputs.device)
        self.model.check_target(target)
        return self._attribute(inputs, target)

    @abstractmethod
    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


def as_target(target: torch.Tensor | int | list[int], n: int, device: torch.device) -> torch.Tensor:
    """Broadcast an int / list / tensor target to a (N,) int64 tensor."""
    t = torch.as_tensor(target, device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries for {n} images")
    return t


#: attribution methods by name: ``METHODS.get(name)(model, **kwargs) -> Attribution``
METHODS: Registry[Any] = Registry("method")
