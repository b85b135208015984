"""The on-disk datamodules (imagefolder, ImageNet, CUB-200-2011, CIFAR-10) on tiny fake layouts."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fake_layouts import (
    CIFAR10_CLASSES,
    IMAGENET_BBOX_DIR,
    class_color,
    make_cifar10,
    make_cub,
    make_imagefolder,
    make_imagenet,
)

from infoflow.data.base import ImageDataModule
from infoflow.data.cifar import CIFAR10DataModule
from infoflow.data.cub import CUB200DataModule
from infoflow.data.imagefolder import ImageFolderDataModule, ImageNetDataModule
from infoflow.errors import ConfigError, DataError, MissingDataError


def first_batch(loader: torch.utils.data.DataLoader) -> dict[str, torch.Tensor]:
    return next(iter(loader))


def bright(dm: ImageDataModule, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) normalised -> (N, H, W) bool: pixels brighter than mid-grey."""
    return dm.denormalize(images).mean(dim=1) > 0.5


def near_edge(mask: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> pixels whose 3x3 neighbourhood is not all in or all out of `mask`."""
    m = mask.float().reshape(-1, 1, *mask.shape[-2:])
    dilated = F.max_pool2d(m, 3, 1, 1)
    eroded = -F.max_pool2d(-m, 3, 1, 1)
    return (dilated != eroded).reshape(mask.shape)


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_split_labels_and_normalisation(tmp_path: Path) -> None:
    path = make_imagefolder(tmp_path / "data", ["cat", "dog", "eel"], n_per_class=4, size=(40, 30))
    dm = ImageFolderDataModule(str(path), image_size=16, resize=20, batch_size=12, val_fraction=0.25, seed=3)
    assert isinstance(dm, ImageDataModule)
    assert (dm.num_classes, dm.class_names, dm.input_size) == (3, ["cat", "dog", "eel"], (3, 16, 16))
    assert not dm.has_masks and not dm.has_boxes
    dm.setup("fit")
    train, val = dm.dataset(True).records, dm.dataset(False).records
    assert (len(train), len(val)) == (9, 3)
    assert len(set(train) | set(val)) == 12
    again = ImageFolderDataModule(str(path), val_fraction=0.25, seed=3)
    assert again.dataset(False).records == val

    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        batch = first_batch(loader)
        n = len(batch["label"])
        assert batch["image"].shape == (n, 3, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64
        assert set(batch) == {"image", "label"}
        colors = torch.tensor([class_color(int(y)) for y in batch["label"]]) / 255  # (N, 3)
        mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
        expected = ((colors - mean) / std)[:, :, None, None].expand_as(batch["image"])
        torch.testing.assert_close(batch["image"], expected, atol=1e-5, rtol=0)


def test_imagefolder_val_path_and_num_classes(tmp_path: Path) -> None:
    path = make_imagefolder(tmp_path / "train", ["a", "b", "c"], n_per_class=2)
    val_path = make_imagefolder(tmp_path / "val", ["b"], n_per_class=3)
    dm = ImageFolderDataModule(str(path), val_path=str(val_path), num_classes=10, image_size=8, resize=8)
    assert dm.num_classes == 10 and len(dm.class_names) == 10 and dm.class_names[:3] == ["a", "b", "c"]
    assert [label for _, label in dm.dataset(False).records] == [1, 1, 1]
    assert len(dm.dataset(True)) == 6
    with pytest.raises(ConfigError, match="num_classes=2"):
        ImageFolderDataModule(str(path), num_classes=2)
    make_imagefolder(tmp_path / "val", ["zebra"], n_per_class=1)
    with pytest.raises(DataError, match="zebra"):
        ImageFolderDataModule(str(path), val_path=str(val_path)).setup("validate")
    with pytest.raises(ConfigError, match="empty split"):
        ImageFolderDataModule(str(path), val_fraction=0.0).setup()


def test_imagefolder_clear_errors_for_missing_or_empty_folders(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(MissingDataError, match=re.escape(str(missing))):
        ImageFolderDataModule(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="no class folders"):
        ImageFolderDataModule(str(tmp_path / "empty"))
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    (tmp_path / "noimages" / "cat" / "notes.txt").write_text("not an image")
    dm = ImageFolderDataModule(str(tmp_path / "noimages"))
    with pytest.raises(MissingDataError, match=f"no images .* {re.escape(str(tmp_path / 'noimages'))}"):
        dm.setup("fit")


# ---------------------------------------------------------------- ImageNet

# Val images 120x80 -> Resize(40) -> 60x40 -> CenterCrop(32): scale 1/2, crop offset (x 14, y 4).
IMAGENET_KW = {"image_size": 32, "resize": 40, "batch_size": 6}


def expected_imagenet_mask(*edge_boxes: tuple[int, int, int, int]) -> torch.Tensor:
    """(32, 32) bool from boxes given in output pixels as [x0, x1) x [y0, y1)."""
    mask = torch.zeros(32, 32, dtype=torch.bool)
    for x0, x1, y0, y1 in edge_boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def test_imagenet_labels_transforms_and_box_mask(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path, wnids=("n02", "n01", "n03"), n_train=2, n_val=2)
    dm = ImageNetDataModule(str(root), bbox_dir=str(root / IMAGENET_BBOX_DIR), num_workers=1, **IMAGENET_KW)
    assert (
        dm.num_classes == 1000 and dm.class_names[:3] == ["n01", "n02", "n03"] and len(dm.class_names) == 1000
    )
    assert dm.has_boxes and not dm.has_masks and dm.input_size == (3, 32, 32)
    dm.setup("fit")
    assert sorted(label for _, label in dm.dataset(True).records) == [0, 0, 1, 1, 2, 2]

    train = first_batch(dm.train_dataloader())
    assert set(train) == {"image", "label"} and train["image"].shape == (6, 3, 32, 32)
    colors = torch.tensor([class_color(int(y)) for y in train["label"]]) / 255
    torch.testing.assert_close(dm.denormalize(train["image"]).mean(dim=(2, 3)), colors, atol=0.03, rtol=0)

    batch = first_batch(dm.val_dataloader())
    assert batch["box_mask"].shape == (6, 32, 32) and batch["box_mask"].dtype == torch.bool
    # box (30, 10)-(89, 59) inclusive = edges [30, 90) x [10, 60) -> [15, 45) x [5, 30) -> crop [1, 31) x [1, 26)
    expected = expected_imagenet_mask((1, 31, 1, 26)).expand(6, 32, 32)
    assert torch.equal(batch["box_mask"], expected)
    assert torch.equal(bright(dm, batch["image"]), expected)
    assert torch.equal(first_batch(dm.test_dataloader())["box_mask"], expected)


@pytest.mark.parametrize("xml_scale", [1, 2])
def test_imagenet_union_of_boxes_cut_by_the_crop(tmp_path: Path, xml_scale: int) -> None:
    boxes = ((30, 10, 49, 29), (70, 40, 99, 79))
    root = make_imagenet(tmp_path, wnids=("n01",), n_train=0, n_val=1, boxes=boxes, xml_scale=xml_scale)
    dm = ImageNetDataModule(str(root), bbox_dir=str(root / IMAGENET_BBOX_DIR), **IMAGENET_KW)
    item = dm.dataset(False)[0]
    # [30, 50) x [10, 30) -> [1, 11) x [1, 11);  [70, 100) x [40, 80) -> [21, 36) x [16, 36), cut at 32
    expected = expected_imagenet_mask((1, 11, 1, 11), (21, 32, 16, 32))
    assert torch.equal(item["box_mask"], expected)
    assert torch.equal(bright(dm, item["image"][None])[0], expected)


def test_imagenet_clear_errors(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path / "in", wnids=("n01", "n02"), n_train=1, n_val=2)
    missing_xml = root / IMAGENET_BBOX_DIR / "ILSVRC2012_val_00000003.xml"
    missing_xml.unlink()
    dm = ImageNetDataModule(str(root), bbox_dir=str(root / IMAGENET_BBOX_DIR))
    with pytest.raises(MissingDataError, match=re.escape(str(missing_xml))):
        dm.setup("validate")
    with pytest.raises(MissingDataError, match="nowhere"):
        ImageNetDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(MissingDataError, match="boxes"):
        ImageNetDataModule(str(root), bbox_dir=str(tmp_path / "boxes"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match=re.escape(str(tmp_path / "empty" / "val"))):
        ImageNetDataModule(str(tmp_path / "empty"))
    val_only = make_imagenet(tmp_path / "val_only", wnids=("n01",), n_train=0, n_val=1, with_xml=False)
    (val_only / "train" / "n01").rmdir()
    (val_only / "train").rmdir()
    dm = ImageNetDataModule(str(val_only))
    assert len(first_batch(dm.val_dataloader())["label"]) == 1
    with pytest.raises(MissingDataError, match=re.escape(str(val_only / "train"))):
        dm.train_dataloader()
    for i in range(1001):
        (tmp_path / "big" / "train" / f"n{i:08d}").mkdir(parents=True)
    with pytest.raises(DataError, match="1001 class folders"):
        ImageNetDataModule(str(tmp_path / "big"))


# ---------------------------------------------------------------- CUB-200-2011


def cub_image_id(path: str, n_per_class: int = 4) -> int:
    c, i = re.search(r"Bird_(\d+)_(\d+)\.jpg$", path).groups()
    return int(c) * n_per_class + int(i) + 1


def test_cub_labels_are_zero_based_and_split_is_official(tmp_path: Path) -> None:
    root = make_cub(tmp_path, n_classes=3, n_per_class=4)
    dm = CUB200DataModule(str(root), image_size=32, batch_size=12)
    assert (dm.num_classes, dm.class_names) == (3, ["Bird_0", "Bird_1", "Bird_2"])
    assert dm.has_boxes and dm.has_masks
    dm.setup("fit")
    for train in (True, False):
        records = dm.dataset(train).records
        assert len(records) == 6
        assert all(cub_image_id(r.image) % 2 == int(train) for r in records)
        assert all(r.label == (cub_image_id(r.image) - 1) // 4 for r in records)
    batch = first_batch(dm.val_dataloader())
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert set(batch) == {"image", "label", "mask", "box_mask"}


def test_cub_mask_and_box_follow_the_image(tmp_path: Path) -> None:
    root = make_cub(tmp_path, n_classes=2, n_per_class=4, size=(90, 60))
    dm = CUB200DataModule(str(root), image_size=32, batch_size=4)
    torch.manual_seed(0)
    batches = [first_batch(dm.val_dataloader())] + [first_batch(dm.train_dataloader()) for _ in range(4)]
    for batch in batches:
        mask, box, lit = batch["mask"], batch["box_mask"], bright(dm, batch["image"])
        assert mask.shape == box.shape == (4, 32, 32) and mask.dtype == box.dtype == torch.bool
        # the mask is the ellipse (not the soft 102 ring around it), aligned with the image up to edge pixels
        assert not ((mask != lit) & ~near_edge(mask)).any()
        assert mask.sum() < 0.9 * box.sum()
        # the box is the ellipse's bounding box
        assert not ((mask & ~box) & ~near_edge(box)).any()
        rows, cols = lit.any(dim=2), lit.any(dim=1)
        assert torch.equal(rows, box.any(dim=2)) and torch.equal(cols, box.any(dim=1))
    flipped = [b["image"] for b in batches[1:]]
    assert any(not torch.equal(flipped[0], f) for f in flipped[1:])


def test_cub_segmentations_are_optional_and_found_in_either_place(tmp_path: Path) -> None:
    no_seg = make_cub(tmp_path / "a", n_classes=1, n_per_class=2, segmentations=None)
    dm = CUB200DataModule(str(no_seg), image_size=16)
    assert not dm.has_masks and dm.has_boxes
    assert set(first_batch(dm.val_dataloader())) == {"image", "label", "box_mask"}
    inside = make_cub(tmp_path / "b", n_classes=1, n_per_class=2, segmentations="CUB_200_2011/segmentations")
    dm = CUB200DataModule(str(inside), image_size=16)
    assert dm.has_masks and first_batch(dm.val_dataloader())["mask"].shape == (1, 16, 16)


def test_cub_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=re.escape(str(tmp_path / "nope"))):
        CUB200DataModule(str(tmp_path / "nope"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(MissingDataError, match="CUB_200_2011"):
        CUB200DataModule(str(tmp_path / "bare"))
    root = make_cub(tmp_path / "cub", n_classes=2, n_per_class=2)
    seg = root / "segmentations" / "002.Bird_1" / "Bird_1_0001.png"
    seg.unlink()
    with pytest.raises(MissingDataError, match=re.escape(str(seg))):
        CUB200DataModule(str(root)).setup("test")
    image = root / "CUB_200_2011" / "images" / "001.Bird_0" / "Bird_0_0000.jpg"
    image.unlink()
    with pytest.raises(MissingDataError, match=re.escape(str(image))):
        CUB200DataModule(str(root)).setup("fit")


# ---------------------------------------------------------------- CIFAR-10


def test_fake_cifar10_has_the_real_pickle_format(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path) / "cifar-10-batches-py"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], "test_batch"]
    with open(folder / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # as on the CIFAR website
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].shape == (4, 3072) and batch[b"data"].dtype.name == "uint8"
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"][0] == b"airplane"


def test_cifar10_images_labels_and_transforms(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path, n_per_batch=4, n_test=6)
    dm = CIFAR10DataModule(str(root), batch_size=6)
    assert (dm.num_classes, dm.class_names, dm.input_size) == (10, CIFAR10_CLASSES, (3, 32, 32))
    assert not dm.has_masks and not dm.has_boxes
    dm.setup("fit")
    assert (len(dm.dataset(True)), len(dm.dataset(False))) == (20, 6)

    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        test = pickle.load(f, encoding="bytes")
    batch = first_batch(dm.test_dataloader())
    assert set(batch) == {"image", "label"} and batch["image"].shape == (6, 3, 32, 32)
    assert batch["label"].tolist() == test[b"labels"]
    pixels = torch.from_numpy(test[b"data"]).reshape(6, 3, 32, 32) / 255
    torch.testing.assert_close(dm.denormalize(batch["image"]), pixels, atol=1e-5, rtol=0)

    assert first_batch(dm.train_dataloader())["image"].shape == (6, 3, 32, 32)
    big = CIFAR10DataModule(str(root), image_size=64, batch_size=2)
    assert big.input_size == (3, 64, 64)
    assert first_batch(big.train_dataloader())["image"].shape == (2, 3, 64, 64)
    assert first_batch(big.val_dataloader())["image"].shape == (2, 3, 64, 64)


def test_cifar10_missing_files_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=re.escape(str(tmp_path / "nope"))):
        CIFAR10DataModule(str(tmp_path / "nope"))
    with pytest.raises(MissingDataError, match=r"cifar-10-batches-py.*download=True"):
        CIFAR10DataModule(str(tmp_path))
    root = make_cifar10(tmp_path / "c")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(MissingDataError, match=r"files data_batch_3 are missing"):
        CIFAR10DataModule(str(root))
