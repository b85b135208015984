"""Datamodules for images in ``<class>/<image>`` folders: generic (torchvision ImageFolder layout) and ImageNet."""

from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.folder import find_classes as torchvision_find_classes
from torchvision.transforms import v2

from infoflow.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DictDataModule,
    DictDataset,
    Example,
    to_tensor_transform,
)
from infoflow.data.boxes import read_imagenet_boxes
from infoflow.data.files import load_rgb, require_dir
from infoflow.errors import ConfigError, DataError, MissingDataError


def find_classes(directory: Path) -> list[str]:
    """Sorted names of the class sub-folders of `directory` (torchvision's order), hidden folders left out."""
    try:
        classes = [c for c in torchvision_find_classes(str(directory))[0] if not c.startswith(".")]
    except FileNotFoundError:
        classes = []
    if not classes:
        raise MissingDataError(f"{directory} has no class folders (expected <class>/<image> files)")
    return classes


def scan_images(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image under ``directory/<class>/``, in sorted order."""
    samples = []
    for name in find_classes(directory):
        if name not in class_to_idx:
            raise DataError(
                f"class folder {directory / name} is not one of the {len(class_to_idx)} known classes"
            )
        for root, dirs, files in os.walk(directory / name, followlinks=True):
            dirs.sort()
            samples += [
                (os.path.join(root, f), class_to_idx[name])
                for f in sorted(files)
                if f.lower().endswith(IMG_EXTENSIONS)
            ]
    if not samples:
        raise MissingDataError(
            f"no images ({', '.join(IMG_EXTENSIONS)}) in the class folders of {directory}"
        )
    return samples


def load_labeled_file(record: tuple[str, int]) -> Example:
    return {"image": load_rgb(record[0]), "label": record[1]}


def eval_geometry(resize: int, image_size: int) -> list[v2.Transform]:
    """The standard torchvision evaluation crop: shorter side to `resize`, centre `image_size` square."""
    return [v2.Resize(resize), v2.CenterCrop(image_size)]


class ImageFolderDataModule(DictDataModule):
    """Images in ``path/<class>/<image>`` (torchvision ImageFolder), class index = sorted folder order.

    The held-out split is `val_path` (same layout; its folders must be classes of `path`) or else a
    seeded random `val_fraction` of `path`. All splits use the evaluation transform
    Resize(`resize`) + CenterCrop(`image_size`) with ImageNet mean/std. `num_classes` defaults to the
    number of class folders; set it to e.g. 1000 when the folders are all the ImageNet wnids.
    """

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        image_size: int = 224,
        resize: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.path = require_dir(path, "<class>/<image> folders")
        self.val_path = require_dir(val_path, "<class>/<image> folders") if val_path is not None else None
        self.val_fraction = val_fraction
        self.seed = seed
        classes = find_classes(self.path)
        self.num_classes = len(classes) if num_classes is None else num_classes
        if self.num_classes < len(classes):
            raise ConfigError(f"num_classes={num_classes} but {self.path} has {len(classes)} class folders")
        self.class_names = classes + [f"class_{i}" for i in range(len(classes), self.num_classes)]
        self.class_to_idx = {name: i for i, name in enumerate(classes)}
        self.input_size = (3, image_size, image_size)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.transform = to_tensor_transform(eval_geometry(resize, image_size), self.mean, self.std)

    def _make_dataset(self, train: bool) -> DictDataset:
        if self.val_path is not None:
            records = scan_images(self.path if train else self.val_path, self.class_to_idx)
        else:
            records = scan_images(self.path, self.class_to_idx)
            n_val = round(self.val_fraction * len(records))
            if not 0 < n_val < len(records):
                raise ConfigError(
                    f"val_fraction={self.val_fraction} of the {len(records)} images in {self.path} leaves an empty "
                    "split; change it or give val_path"
                )
            order = torch.randperm(len(records), generator=torch.Generator().manual_seed(self.seed)).tolist()
            records = [records[i] for i in (order[n_val:] if train else order[:n_val])]
        return DictDataset(records, load_labeled_file, self.transform)


def load_with_imagenet_boxes(bbox_dir: Path, record: tuple[str, int]) -> Example:
    """Image, label and the boxes of ``bbox_dir/<image-stem>.xml``."""
    example = load_labeled_file(record)
    example["boxes"] = read_imagenet_boxes(bbox_dir / f"{Path(record[0]).stem}.xml", example["image"].size)
    return example


class ImageNetDataModule(DictDataModule):
    """ILSVRC-2012 as ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.

    Class index = sorted wnid order (torchvision's pretrained order; taken from ``train``, or from ``val``
    when there is no ``train`` folder). Train: RandomResizedCrop(`image_size`) + horizontal flip;
    val/test/predict (the ``val`` folder): Resize(`resize`) + CenterCrop(`image_size`).
    With `bbox_dir` (the folder of official ``ILSVRC2012_val_*.xml`` box files, one per val image named
    ``<image-stem>.xml``), val/test/predict batches carry ``box_mask``, the union of the image's boxes
    transformed exactly like the image; the train split has no boxes.
    """

    num_classes = 1000

    def __init__(
        self,
        root: str,
        bbox_dir: str | None = None,
        image_size: int = 224,
        resize: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.root = require_dir(root, "ImageNet train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
        self.bbox_dir = (
            require_dir(bbox_dir, "ILSVRC2012_val_*.xml box files") if bbox_dir is not None else None
        )
        self.has_boxes = self.bbox_dir is not None
        class_dir = self.root / "train" if (self.root / "train").is_dir() else self.root / "val"
        self.class_names = find_classes(require_dir(class_dir, "<wnid> folders of images"))
        if len(self.class_names) > self.num_classes:
            raise DataError(f"{class_dir} has {len(self.class_names)} class folders; ImageNet has 1000")
        if len(self.class_names) < self.num_classes:
            warnings.warn(
                f"{class_dir} has {len(self.class_names)} wnid folders: labels follow their sorted order, which is "
                "torchvision's pretrained class order only when all 1000 are present",
                stacklevel=2,
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.class_names)}
        self.class_names += [f"class_{i}" for i in range(len(self.class_names), self.num_classes)]
        self.input_size = (3, image_size, image_size)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.train_transform = to_tensor_transform(
            [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip()], self.mean, self.std
        )
        self.eval_transform = to_tensor_transform(eval_geometry(resize, image_size), self.mean, self.std)

    def _make_dataset(self, train: bool) -> DictDataset:
        split = "train" if train else "val"
        records = scan_images(
            require_dir(self.root / split, f"ImageNet {split}/<wnid>/*.JPEG"), self.class_to_idx
        )
        if train or self.bbox_dir is None:
            return DictDataset(
                records, load_labeled_file, self.train_transform if train else self.eval_transform
            )
        missing = [p for p, _ in records if not (self.bbox_dir / f"{Path(p).stem}.xml").is_file()]
        if missing:
            raise MissingDataError(
                f"no box annotation {self.bbox_dir / (Path(missing[0]).stem + '.xml')} for image {missing[0]} "
                f"({len(missing)} of {len(records)} val images lack their XML file)"
            )
        return DictDataset(records, partial(load_with_imagenet_boxes, self.bbox_dir), self.eval_transform)
