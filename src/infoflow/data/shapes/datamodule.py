"""The `shapes` dataset as a Lightning datamodule: splits rendered on first use, augmented in training."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from infoflow.data.base import ImageDataModule
from infoflow.data.shapes.augment import dihedral_augment, relabel_empty
from infoflow.data.shapes.dataset import ShapesDataset
from infoflow.data.shapes.geometry import SHAPE_NAMES
from infoflow.data.shapes.render import MIN_IMAGE_SIZE, SPLITS, render_split
from infoflow.errors import ConfigError


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


class ShapesDataModule(ImageDataModule):
    """The `shapes` dataset (see `infoflow.data.shapes`) as a datamodule.

    Args:
        image_size: image side H = W in px, at least 32.
        num_classes: 2..6; the classes are the first `num_classes` of ``SHAPE_NAMES``.
        num_train, num_val, num_test: images per split.
        num_empty: extra training images with no object (background only, empty mask). During Lightning
            training each gets a fresh uniformly random label whenever it is drawn (`relabel_empty`), so a
            classifier learns to answer "no object" with equal probabilities for all classes. The val and
            test splits never hold them; the class names stay the shapes.
        seed: data seed; image i of a split is a function of (seed, split, i) only.
        batch_size, num_workers: dataloader settings; the training loader shuffles.
        augment: during Lightning training, give each training image a random one of the 8 rotations by
            multiples of 90 degrees and reflections (the classes are invariant to them), with its mask and box.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    has_masks = True
    has_boxes = True

    def __init__(
        self,
        image_size: int = 64,
        num_classes: int = 4,
        num_train: int = 4000,
        num_val: int = 500,
        num_test: int = 500,
        num_empty: int = 0,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__()
        _check_int("image_size", image_size, MIN_IMAGE_SIZE)
        if isinstance(num_classes, bool) or num_classes not in range(2, len(SHAPE_NAMES) + 1):
            raise ConfigError(
                f"num_classes must be in 2..{len(SHAPE_NAMES)} (classes, in order: "
                f"{', '.join(SHAPE_NAMES)}), got {num_classes!r}"
            )
        for name, value, low in [
            ("num_train", num_train, 1),
            ("num_val", num_val, 1),
            ("num_test", num_test, 1),
            ("num_empty", num_empty, 0),
            ("seed", seed, 0),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ]:
            _check_int(name, value, low)
        self.save_hyperparameters()
        self.image_size, self.num_classes, self.seed = image_size, num_classes, seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.num_empty = num_empty
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.input_size = (3, image_size, image_size)
        self.class_names = list(SHAPE_NAMES[:num_classes])
        self.datasets: dict[str, ShapesDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Renders the splits that `stage` needs: fit -> train+val, validate -> val, test/predict -> test,
        None -> all. Each split is rendered once and cached."""
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in needed.get(stage, list(SPLITS)):
            self.dataset(split)

    def dataset(self, split: str) -> ShapesDataset:
        """The dataset of `split` ("train", "val" or "test"), rendered on first use."""
        if split not in self.datasets:
            empty = self.num_empty if split == "train" else 0
            data = render_split(split, self.sizes[split], self.image_size, self.num_classes, self.seed, empty)
            self.datasets[split] = ShapesDataset(data, self.mean, self.std)
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        if self.trainer is None or not self.trainer.training:
            return batch
        if self.num_empty:
            batch = relabel_empty(batch, self.num_classes)
        if self.augment:
            batch = dihedral_augment(
                batch, torch.randint(0, 8, (batch["label"].shape[0],), device=batch["label"].device)
            )
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
