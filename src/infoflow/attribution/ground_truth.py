"""The ground-truth oracle: the batch's object mask as the attribution, for checking the metrics."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from infoflow.errors import ConfigError
from infoflow.interface import METHODS, Attribution
from infoflow.models.zoo import ZooModel


@METHODS.register("ground-truth")
class GroundTruth(Attribution):
    """Oracle: the batch's object mask (``key``: ``mask`` or ``box_mask``) as the attribution, (N, H, W) 0/1.

    It reads the batch, not only the images, so it implements `attribute_batch` (no `_attribute`).
    """

    unit = "mask"
    images_only = False

    def __init__(self, model: ZooModel, key: str = "mask") -> None:
        super().__init__(model)
        self.key = key

    def attribute_batch(self, batch: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if self.key not in batch:
            raise ConfigError(f"ground-truth needs {self.key!r} in the batches; this data has {sorted(batch)}")
        return batch[self.key].float()
