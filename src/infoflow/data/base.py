"""What every datamodule provides, and the base of the on-disk ones.

Batches are dicts:
- ``image``: (N, C, H, W) float, normalised with the datamodule's ``mean``/``std``;
- ``label``: (N,) int64 class index;
- ``mask`` (optional): (N, H, W) bool pixel mask of the object;
- ``box_mask`` (optional): (N, H, W) bool union of the object bounding boxes.

On-disk datamodules (`imagefolder`, `cub`, `cifar`) build on `DictDataset`: records + a ``load(record) ->
example`` function + one joint torchvision-v2 transform. An example is a dict with ``image`` (PIL), ``label``
(int) and optionally ``mask`` (``tv_tensors.Mask``, (H, W) uint8) and ``boxes``
(``tv_tensors.BoundingBoxes``); the transform moves masks and boxes with the image, and the boxes become
``box_mask`` at the output resolution. `DictDataModule` serves a training split and one held-out split
(used for val, test and predict), built lazily, as dict batches.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from infoflow.data.boxes import boxes_to_mask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Example = dict[str, Any]


class classorinstancemethod:  # noqa: N801  (named like classmethod)
    """A method bound to the instance when called on one, else to the class.

    `ImageDataModule.normalize` reads ``mean``/``std``: an on-disk datamodule sets them on the instance
    (CIFAR-10's from the data set), the shapes datamodule on the class, so ``ShapesDataModule.normalize(x)``
    and ``dm.normalize(x)`` both use the right ones.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, cls: type | None = None) -> Callable[..., Any]:
        return types.MethodType(self.func, cls if obj is None else obj)


def _channels(values: Sequence[float], images: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, device=images.device).view(1, -1, 1, 1)


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
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    class_names: list[str]
    has_masks: bool = False
    has_boxes: bool = False

    @classorinstancemethod
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> normalised with the data's `mean` and `std` (as the model expects)."""
        return (images - _channels(self.mean, images)) / _channels(self.std, images)

    @classorinstancemethod
    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalised -> (N, C, H, W) in [0, 1]."""
        return (images * _channels(self.std, images) + _channels(self.mean, images)).clamp(0, 1)


class DictDataset(Dataset):
    """``dataset[i]`` = ``transform(load(records[i]))`` as a dict of tensors.

    Items: ``image`` (C, H, W) float normalised, ``label`` int, ``mask`` (H, W) bool if the example has
    one, ``box_mask`` (H, W) bool (union of the boxes) if it has boxes.
    """

    def __init__(
        self, records: Sequence[Any], load: Callable[[Any], Example], transform: v2.Transform
    ) -> None:
        self.records = records
        self.load = load
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.transform(self.load(self.records[index]))
        item = {"image": example["image"].as_subclass(torch.Tensor), "label": int(example["label"])}
        if "mask" in example:
            item["mask"] = example["mask"].as_subclass(torch.Tensor).bool()
        if "boxes" in example:
            item["box_mask"] = boxes_to_mask(example["boxes"], example["boxes"].canvas_size)
        return item


class DictDataModule(ImageDataModule):
    """A training split and a held-out split (val = test = predict), built on first use."""

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._datasets: dict[bool, DictDataset] = {}

    def _make_dataset(self, train: bool) -> DictDataset:
        raise NotImplementedError

    def dataset(self, train: bool) -> DictDataset:
        """The training (`train`=True) or held-out split."""
        if train not in self._datasets:
            self._datasets[train] = self._make_dataset(train)
        return self._datasets[train]

    def setup(self, stage: str | None = None) -> None:
        """Build (and check) the splits `stage` needs: ``fit`` both, others the held-out one."""
        for train in (True, False) if stage in ("fit", None) else (False,):
            self.dataset(train)

    def _loader(self, train: bool) -> DataLoader:
        return DataLoader(
            self.dataset(train),
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(False)


def to_tensor_transform(
    geometry: Sequence[v2.Transform], mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """`geometry` (on PIL images, masks and boxes alike), then float [0, 1] and normalisation."""
    return v2.Compose(
        [*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )
