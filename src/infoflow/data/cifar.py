"""CIFAR-10 from torchvision's ``cifar-10-batches-py`` folder (no downloads)."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torchvision
from torchvision.transforms import v2

from infoflow.data.base import DictDataModule, DictDataset, Example, to_tensor_transform
from infoflow.errors import DataError, MissingDataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: the files the datamodule reads, under its `root`
LAYOUT = "cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}"


class _CIFAR10Files(torchvision.datasets.CIFAR10):
    """torchvision's reader with the MD5 checks off (a ``None`` checksum only requires the file to exist)."""

    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


def load_pair(record: tuple[Any, int]) -> Example:
    """A torchvision ``(PIL image, label)`` pair as an example."""
    return {"image": record[0], "label": record[1]}


@contextlib.contextmanager
def _reading(*paths: Path) -> Iterator[None]:
    """Turn a failure to unpickle one of the CIFAR-10 `paths` into a `DataError` naming it."""
    try:
        yield
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError) as err:
        bad = next((p for p in paths if not _unpickles(p)), None)
        where = f"{bad}" if bad is not None else ", ".join(map(str, paths))
        raise DataError(
            f"cannot read CIFAR-10 file {where}: corrupt or truncated ({type(err).__name__}: {err}); replace it "
            f"with the original from cifar-10-python.tar.gz ({LAYOUT})"
        ) from None


def _unpickles(path: Path) -> bool:
    """Whether `path` holds a whole pickle of a dict (as every CIFAR-10 file does)."""
    try:
        with open(path, "rb") as f:
            return isinstance(pickle.load(f, encoding="latin1"), dict)
    except Exception:  # noqa: BLE001  (any failure means: not a readable CIFAR-10 file)
        return False


class CIFAR10DataModule(DictDataModule):
    """CIFAR-10 from ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Train: RandomCrop(32, padding=4) + horizontal flip; the test batch serves as val/test/predict.
    Images are 32x32, resized to `image_size` when that differs. No masks or boxes.
    """

    def __init__(self, root: str, image_size: int = 32, batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root = Path(root).expanduser()
        folder = self.root / _CIFAR10Files.base_folder
        names = [n for n, _ in _CIFAR10Files.train_list + _CIFAR10Files.test_list]
        names.append(_CIFAR10Files.meta["filename"])
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            what = (f"data root {self.root} does not exist" if not self.root.is_dir()
                    else f"CIFAR-10 files {', '.join(missing)} are missing from {folder}")
            raise MissingDataError(
                f"{what} (expected {self.root}/{LAYOUT}). Downloads are impossible offline: "
                f"on a connected machine run torchvision.datasets.CIFAR10({str(self.root)!r}, download=True) "
                f"(or unpack cifar-10-python.tar.gz there) and copy {folder} here."
            )
        self.num_classes = 10
        self.input_size = (3, image_size, image_size)
        self.mean, self.std = CIFAR10_MEAN, CIFAR10_STD
        resize = [v2.Resize(image_size)] if image_size != 32 else []
        augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        self.train_transform = to_tensor_transform([*augment, *resize], self.mean, self.std)
        self.eval_transform = to_tensor_transform(resize, self.mean, self.std)
        meta = folder / _CIFAR10Files.meta["filename"]
        with _reading(meta), open(meta, "rb") as f:
            self.class_names = list(pickle.load(f, encoding="latin1")[_CIFAR10Files.meta["key"]])

    def _make_dataset(self, train: bool) -> DictDataset:
        folder = self.root / _CIFAR10Files.base_folder
        names = [n for n, _ in (_CIFAR10Files.train_list if train else _CIFAR10Files.test_list)]
        with _reading(*(folder / n for n in names)):
            cifar = _CIFAR10Files(str(self.root), train=train, download=False)
        return DictDataset(cifar, load_pair, self.train_transform if train else self.eval_transform)
