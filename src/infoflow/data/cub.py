"""CUB-200-2011 birds in the official layout, with bounding boxes and (optional) segmentations."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from infoflow.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DictDataModule,
    DictDataset,
    Example,
    to_tensor_transform,
)
from infoflow.data.boxes import make_boxes
from infoflow.data.files import load_rgb, open_image, require_dir, to_8bit
from infoflow.errors import MissingDataError

LAYOUT = (
    "CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, bounding_boxes.txt, "
    "classes.txt, images/<class>/<file>.jpg}"
)


class CubRecord(NamedTuple):
    image: str
    label: int  # 0-based
    box: tuple[float, float, float, float]  # x, y, width, height in pixels
    segmentation: str | None


def load_cub(record: CubRecord) -> Example:
    """Image, label, its box and, when there is a segmentation, ``mask`` = segmentation > 127."""
    image = load_rgb(record.image)
    x, y, w, h = record.box
    example = {
        "image": image,
        "label": record.label,
        "boxes": make_boxes(torch.tensor([x, y, x + w, y + h]), (image.height, image.width)),
    }
    if record.segmentation is not None:
        seg = to_8bit(open_image(record.segmentation), record.segmentation).convert("L")
        example["mask"] = tv_tensors.Mask(torch.from_numpy(np.asarray(seg) > 127).to(torch.uint8))
    return example


def _read_table(path: Path) -> dict[int, list[str]]:
    """``<image_id> <fields...>`` lines -> {image_id: fields}."""
    if not path.is_file():
        raise MissingDataError(f"{path} is missing (expected the official layout {LAYOUT})")
    rows = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {int(row[0]): row[1:] for row in rows}


class CUB200DataModule(DictDataModule):
    """CUB-200-2011: ``root/CUB_200_2011/...`` (official files) and optionally the segmentations.

    Segmentations (``<class>/<file>.png``) are looked for in ``root/segmentations`` and then
    ``root/CUB_200_2011/segmentations``; with them batches carry ``mask`` (segmentation > 0.5).
    Batches always carry ``box_mask``. Labels are 0-based; the official train/test split is used, the
    test split serving as val/test/predict. Images are resized to `image_size` x `image_size` (no crop,
    masks nearest-neighbour), training adds a horizontal flip of image, mask and box together.
    """

    def __init__(self, root: str, image_size: int = 224, batch_size: int = 32, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root = require_dir(root, f"the folder holding {LAYOUT}")
        self.base = require_dir(self.root / "CUB_200_2011", LAYOUT)
        classes = _read_table(self.base / "classes.txt")
        self.class_names = [classes[i][0].split(".", 1)[-1] for i in sorted(classes)]
        self.num_classes = len(self.class_names)
        candidates = (self.root / "segmentations", self.base / "segmentations")
        self.segmentation_dir = next((d for d in candidates if d.is_dir()), None)
        self.has_masks = self.segmentation_dir is not None
        self.has_boxes = True
        self.input_size = (3, image_size, image_size)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        resize = v2.Resize((image_size, image_size))
        self.train_transform = to_tensor_transform([resize, v2.RandomHorizontalFlip()], self.mean, self.std)
        self.eval_transform = to_tensor_transform([resize], self.mean, self.std)

    def _make_dataset(self, train: bool) -> DictDataset:
        images = _read_table(self.base / "images.txt")
        labels = _read_table(self.base / "image_class_labels.txt")
        is_train = _read_table(self.base / "train_test_split.txt")
        boxes = _read_table(self.base / "bounding_boxes.txt")
        records = []
        for image_id in sorted(images):
            if (is_train[image_id][0] == "1") != train:
                continue
            rel = images[image_id][0]
            image = self.base / "images" / rel
            seg = self.segmentation_dir / Path(rel).with_suffix(".png") if self.segmentation_dir else None
            for path in (image, seg):
                if path is not None and not path.is_file():
                    raise MissingDataError(f"{path} (listed in {self.base / 'images.txt'}) is missing")
            box = tuple(float(v) for v in boxes[image_id])
            records.append(
                CubRecord(str(image), int(labels[image_id][0]) - 1, box, str(seg) if seg else None)
            )
        if not records:
            raise MissingDataError(f"no {'train' if train else 'test'} images listed in {self.base}")
        return DictDataset(records, load_cub, self.train_transform if train else self.eval_transform)
