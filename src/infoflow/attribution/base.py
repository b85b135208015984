"""One small interface for every attribution method: ``attribute(inputs, target) -> (N, H, W)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch

from infoflow.models.zoo import ZooModel
from infoflow.registry import Registry
from infoflow.utils.validation import as_target


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
            inputs: images (N, C, H, W), float32 (the model's dtype), normalised as the model expects.
            target: integer class index per image (N,), or one int for all.
        Returns:
            (N, H, W) float tensor on the inputs' device, in `self.unit`. For N = 0 an empty (0, H, W)
            tensor, without running the model.
        Raises:
            InputError: for NaN, inf or absurd pixel values, another dtype or shape, float or bool targets,
                a target of the wrong length or out of range (see `infoflow.utils.validation`).
        """
        target = check_inputs_and_target(self.model, inputs, target)
        if inputs.shape[0] == 0:
            return empty_maps(inputs)
        return self._attribute(inputs, target)

    @abstractmethod
    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


def check_inputs_and_target(model: ZooModel, inputs: torch.Tensor, target: Any) -> torch.Tensor:
    """Check `inputs` for `model` (raising an `InputError`) and return `target` as (N,) int64 class indices."""
    model.check_inputs(inputs)
    return as_target(target, inputs.shape[0], inputs.device, model.num_classes, model.name)


def empty_maps(inputs: torch.Tensor) -> torch.Tensor:
    """The (0, H, W) maps of an empty batch `inputs` (0, C, H, W)."""
    return inputs.new_zeros((0, *inputs.shape[2:]))


#: attribution methods by name: ``METHODS.get(name)(model, **kwargs) -> Attribution``
METHODS: Registry[Any] = Registry("method")
