"""The contract every attribution method implements, and the registry that names them.

``attribute(inputs, target) -> (N, H, W)`` for methods that read only the images; ``attribute_batch(batch,
target)`` for every method (the ground-truth oracle reads the batch's mask). The method modules
(`infoflow.attribution`, `infoflow.iba`) sit above this module and register into `METHODS` on import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from infoflow.errors import ConfigError
from infoflow.models.zoo import ZooModel
from infoflow.registry import Registry
from infoflow.utils.validation import as_target


class Attribution:
    """An attribution method for one zoo model (Captum-style).

    Subclasses implement `_attribute` (maps from images) or, when they read more of the batch than its
    images, override `attribute_batch`. `attribute` validates the inputs first.
    """

    #: unit of the heatmap values, shown on colour bars and in tables
    unit: str = "a.u."
    #: whether `fit` estimates something from training data (IBA's feature statistics, PatternAttribution's
    #: patterns); `infoflow.builders.build_method` sets up the training split only for these
    requires_fit: bool = False
    #: whether the maps come from the images alone (`attribute` works); False for methods that read more of
    #: the batch (the ground-truth oracle), which checks that re-attribute images (sanity) leave out
    images_only: bool = True

    def __init__(self, model: ZooModel) -> None:
        reason = self.unsupported(model)
        if reason is not None:
            raise ConfigError(reason)
        self.model = model

    @classmethod
    def unsupported(cls, model: ZooModel) -> str | None:
        """Why this method cannot explain `model` (e.g. LRP on a transformer), or None if it can. The
        constructor raises a `ConfigError` with it; Table 1 leaves such rows out and says why."""
        return None

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

    def attribute_batch(self, batch: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """(N, H, W) maps for a batch of the datamodule format (``image`` (N, C, H, W), ``label``, masks...).

        The entry point that works for every method; by default the maps of ``batch["image"]``."""
        return self.attribute(batch["image"], target)

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Maps (N, H, W) from validated images (N, C, H, W) and targets (N,): the hook of image-only methods."""
        raise NotImplementedError(
            f"{type(self).__name__} does not attribute images alone: call attribute_batch(batch, target)"
        )


def check_inputs_and_target(model: ZooModel, inputs: torch.Tensor, target: Any) -> torch.Tensor:
    """Check `inputs` for `model` (raising an `InputError`) and return `target` as (N,) int64 class indices."""
    model.check_inputs(inputs)
    return as_target(target, inputs.shape[0], inputs.device, model.num_classes, model.name)


def empty_maps(inputs: torch.Tensor) -> torch.Tensor:
    """The (0, H, W) maps of an empty batch `inputs` (0, C, H, W)."""
    return inputs.new_zeros((0, *inputs.shape[2:]))


#: attribution methods by name: ``METHODS.get(name)(model, **kwargs) -> Attribution``
METHODS: Registry[Any] = Registry("method")


def unsupported(method: str, model: ZooModel) -> str | None:
    """Why registered `method` cannot explain `model` (`Attribution.unsupported` of its class), or None."""
    factory = METHODS.get(method)
    check = getattr(getattr(factory, "func", factory), "unsupported", None)  # presets are partials
    return None if check is None else check(model)
