"""What every datamodule provides.

Batches are dicts:
- ``image``: (N, C, H, W) float, normalised with the datamodule's ``mean``/``std``;
- ``label``: (N,) int64 class index;
- ``mask`` (optional): (N, H, W) bool pixel mask of the object;
- ``box_mask`` (optional): (N, H, W) bool union of the object bounding boxes.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class ImageDataModule(pl.LightningDataModule):
    """Base for the image-classification datamodules.

    Attributes:
        num_classes: number of classes.
        input_size: (C, H, W) of one normalised image.
        mean, std: per-channel normalisation; `denormalize` undoes it for display.
        class_names: one name per class.
        has_masks / has_boxes: whether batches carry ``mask`` / ``box_mask``.
    """

    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    class_names: list[str]
    has_masks: bool = False
    has_boxes: bool = False

    @classmethod
    def normalize(cls, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> normalised with the data's `mean` and `std` (as the model expects)."""
        mean = torch.tensor(cls.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(cls.std, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalised -> (N, C, H, W) in [0, 1]."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)
