"""Image files on disk: corrupt or truncated files name themselves, 16-bit grayscale keeps its contrast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_layouts import make_imagefolder
from PIL import Image

from infoflow.data.base import IMAGENET_MEAN, IMAGENET_STD, DictDataset
from infoflow.data.files import load_rgb
from infoflow.data.imagefolder import ImageFolderDataModule
from infoflow.errors import DataError


def folder_with(tmp_path: Path, name: str, write) -> tuple[DictDataset, int]:
    """An image folder (2 classes x 2 images) in which `write(path)` made ``cat/name``: (its split, its index)."""
    root = make_imagefolder(tmp_path / "data", ["ant", "cat"], n_per_class=2, size=(40, 40), ext=".jpg")
    write(root / "cat" / name)
    dm = ImageFolderDataModule(str(root), image_size=32, resize=32, val_fraction=0.25)
    for split in (dm.dataset(True), dm.dataset(False)):
        names = [Path(p).name for p, _ in split.records]
        if name in names:
            return split, names.index(name)
    raise AssertionError(f"{name} is in no split")


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_a_corrupt_jpeg_is_a_data_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    def write(path: Path) -> None:
        noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(noise).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"\x00 not an image")

    path = tmp_path / "bad.jpg"
    write(path)
    with pytest.raises(DataError, match=rf"cannot read image {path}"):
        load_rgb(path)
    split, index = folder_with(tmp_path, "bad.jpg", write)
    with pytest.raises(DataError, match=r"cannot read image .*cat/bad\.jpg"):
        split[index]


def test_a_16_bit_grayscale_png_is_scaled_not_white(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL's own convert("RGB") would clip this to white
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.abs(rgb[..., 0].astype(float) - ramp / 257.0).max() <= 0.5  # 16 -> 8 bit, rounded
    assert rgb.min() == 0 and rgb.max() == 255

    def write(p: Path) -> None:
        Image.fromarray(ramp).save(p)

    split, index = folder_with(tmp_path, "deep.png", write)
    image = split[index]["image"] * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert 0.3 < float(image.mean()) < 0.7  # a mid-grey ramp on average, not all white (1.0)


def test_float_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((8, 8), dtype=np.float32)).save(path)
    with pytest.raises(DataError, match="floating-point"):
        load_rgb(path)
