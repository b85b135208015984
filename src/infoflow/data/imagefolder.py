"""Datamodules for images in ``<class>/<image>`` folders (generic and ImageNet), and the shared pieces.

Shared by all on-disk datamodules (also `cub` and `cifar`):
- `DictDataset`: records + a ``load(record) -> example`` function + one joint torchvision-v2 transform.
  An example is a dict with ``image`` (PIL), ``label`` (int) and optionally ``mask``
  (``tv_tensors.Mask``, (H, W) uint8) and ``boxes`` (``tv_tensors.BoundingBoxes``); the transform moves
  masks and boxes with the image, and the boxes become ``box_mask`` at the output resolution.
- `DictDataModule`: a training split and one held-out split (used for val, test and predict), built
  lazily, served as dict batches.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from infoflow.data.base import ImageDataModule
from infoflow.data.boxes import boxes_to_mask, read_imagenet_boxes
from infoflow.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Example = dict[str, Any]


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


def require_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path, or FileNotFoundError naming it and what it should hold."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist or is not a directory (expected {what})")
    return path


def open_image(path: str | Path) -> Image.Image:
    """The fully decoded image at `path`; a corrupt, truncated or unreadable file is a DataError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err} (corrupt, truncated or not an image file); "
                        "replace or remove it") from None


def to_8bit(image: Image.Image, path: str | Path = "") -> Image.Image:
    """8-bit image: 16/32-bit integer grayscale (modes ``I;16*``, ``I``) scaled from [0, 65535] to [0, 255]
    (PIL's own conversion would clip everything above 255 to white); float images are refused."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        raise DataError(f"image {path} holds floating-point pixels (mode F): save it as 8- or 16-bit")
    return image


def load_rgb(path: str | Path) -> Image.Image:
    """The image at `path` as 8-bit RGB (16-bit grayscale scaled, see `to_8bit`)."""
    return to_8bit(open_image(path), path).convert("RGB")


def find_classes(directory: Path) -> list[str]:
    """Sorted names of the class sub-folders of `directory`."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{directory} has no class folders (expected <class>/<image> files)")
    return classes


def scan_images(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image under ``directory/<class>/``, in sorted order."""
    samples = []
    for name in find_classes(directory):
        if name not in class_to_idx:
            raise ValueError(
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
        raise FileNotFoundError(
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
            raise ValueError(f"num_classes={num_classes} but {self.path} has {len(classes)} class folders")
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
                raise ValueError(
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
            raise ValueError(f"{class_dir} has {len(self.class_names)} class folders; ImageNet has 1000")
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
            raise FileNotFoundError(
                f"no box annotation {self.bbox_dir / (Path(missing[0]).stem + '.xml')} for image {missing[0]} "
                f"({len(missing)} of {len(records)} val images lack their XML file)"
            )
        return DictDataset(records, partial(load_with_imagenet_boxes, self.bbox_dir), self.eval_transform)
