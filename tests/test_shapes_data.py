"""The built-in `shapes` dataset: determinism, ground truth, configuration, normalisation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infoflow.data.base import ImageDataModule
from infoflow.data.shapes import (
    EMPTY_SPLIT_ID,
    OBJECT_SCALE,
    SHAPE_NAMES,
    SPLITS,
    ShapesDataModule,
    box_to_mask,
    dihedral_augment,
    mask_to_box,
    relabel_empty,
    render_image,
    render_split,
)
from infoflow.errors import ConfigError

SMALL = {"num_train": 48, "num_val": 24, "num_test": 24, "batch_size": 16}


def _all(dm: ShapesDataModule, split: str) -> dict[str, torch.Tensor]:
    """Every item of a split, stacked (in dataset order)."""
    ds = dm.dataset(split)
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) bool mask grown by `radius` px (a square structuring element)."""
    return torch.nn.functional.max_pool2d(mask[None].float(), 2 * radius + 1, 1, radius)[0].bool()


@pytest.fixture(scope="module")
def dm() -> ShapesDataModule:
    module = ShapesDataModule(**SMALL)
    module.setup()
    return module


def test_contract(dm: ShapesDataModule) -> None:
    assert isinstance(dm, ImageDataModule)
    assert dm.num_classes == 4 and dm.class_names == ["circle", "square", "triangle", "cross"]
    assert dm.input_size == (3, 64, 64)
    assert dm.mean == (0.5, 0.5, 0.5) and dm.std == (0.25, 0.25, 0.25)
    assert dm.has_masks and dm.has_boxes
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == torch.int64
    assert batch["mask"].shape == (16, 64, 64) and batch["mask"].dtype == torch.bool
    assert batch["box_mask"].shape == (16, 64, 64) and batch["box_mask"].dtype == torch.bool
    assert batch["box"].shape == (16, 4) and batch["box"].dtype == torch.float32


def test_loaders(dm: ShapesDataModule) -> None:
    def labels(loader: torch.utils.data.DataLoader) -> torch.Tensor:
        return torch.cat([b["label"] for b in loader])

    for split, loader in [("val", dm.val_dataloader()), ("test", dm.test_dataloader())]:
        assert torch.equal(labels(loader), dm.dataset(split).data["label"])  # in order
    assert torch.equal(labels(dm.predict_dataloader()), dm.dataset("test").data["label"])
    assert isinstance(dm.train_dataloader().sampler, torch.utils.data.RandomSampler)
    torch.manual_seed(0)
    epochs = [torch.cat([b["label"] for b in dm.train_dataloader()]) for _ in range(2)]
    assert not torch.equal(epochs[0], epochs[1])  # shuffled anew each epoch


def test_same_seed_same_data_other_seed_other_data(dm: ShapesDataModule) -> None:
    again = ShapesDataModule(**SMALL)
    other = ShapesDataModule(**SMALL, seed=1)
    for split in SPLITS:
        a, b, c = _all(dm, split), _all(again, split), _all(other, split)
        for key in a:
            assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a["image"], c["image"])
        assert not torch.equal(a["mask"], c["mask"])


def test_image_depends_only_on_seed_split_index() -> None:
    short = render_split("val", 5, 64, 4, seed=3)
    long = render_split("val", 12, 64, 4, seed=3)
    for key in short:
        assert torch.equal(short[key], long[key][:5])
    image, mask = render_image(np.random.default_rng([3, SPLITS["val"], 7]), 7 % 4, 64)
    assert torch.equal(torch.from_numpy(mask), long["mask"][7])
    assert np.abs(image * 255 - long["image"][7].numpy()).max() <= 0.5 + 1e-3  # uint8 rounding only


def test_splits_differ(dm: ShapesDataModule) -> None:
    images = {split: dm.dataset(split).data["image"].flatten(1) for split in SPLITS}
    for split, flat in images.items():  # and no image repeats within a split
        assert len(torch.unique(flat, dim=0)) == len(flat), split
    for a in SPLITS:
        for b in SPLITS:
            if a < b:  # no image of one split appears in another
                assert (torch.cdist(images[a].float(), images[b].float()) > 0).all()


def test_boxes_are_tight_boxes_of_the_masks(dm: ShapesDataModule) -> None:
    data = _all(dm, "train")
    for mask, box, box_mask in zip(data["mask"], data["box"], data["box_mask"], strict=True):
        rows, cols = np.nonzero(mask.numpy())
        assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert box_mask[mask].all()  # covers the mask
        x0, y0, x1, y1 = box.int().tolist()
        assert box_mask[y0:y1, x0:x1].all() and box_mask.sum() == (x1 - x0) * (y1 - y0)


def test_mask_to_box_and_box_to_mask() -> None:
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[0, 1, 2] = mask[0, 3, 5] = True
    mask[1, 0:6, 7] = True
    boxes = mask_to_box(mask)
    assert boxes.tolist() == [[2, 1, 6, 4], [7, 0, 8, 6]]
    filled = box_to_mask(boxes, 6, 8)
    assert filled[0].sum() == 4 * 3 and filled[0, 1:4, 2:6].all()
    assert torch.equal(filled[1], mask[1])


def test_masks_are_the_object(dm: ShapesDataModule) -> None:
    """Non-empty, inside the image with a 1 px margin, uniformly coloured, contrasting with the pixels
    around it, and exactly the pixels that look more like the object than like the background."""
    data = dm.dataset("train").data
    images = data["image"].float() / 255
    assert data["mask"].flatten(1).any(1).all()
    border = torch.ones(64, 64, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert not data["mask"][:, border].any()
    edge_in, edge_out = [], []  # per anti-aliased edge pixel: is it closer to the object colour?
    for image, mask in zip(images, data["mask"], strict=True):
        inner = ~_dilate(~mask, 1)  # away from the anti-aliased edge
        ring = _dilate(mask, 3) & ~_dilate(mask, 1)
        colour, around = image[:, inner].mean(1), image[:, ring].mean(1)
        assert image[:, inner].std(1).max() < 0.06  # the object's flat colour plus pixel noise
        assert (colour - around).norm() > 0.2
        closer = (image - colour[:, None, None]).norm(dim=0) < (image - around[:, None, None]).norm(dim=0)
        edge_in.append(closer[mask & ~inner])
        edge_out.append(closer[_dilate(mask, 1) & ~mask])
    assert torch.cat(edge_in).float().mean() > 0.9
    assert torch.cat(edge_out).float().mean() < 0.1


def test_object_size_carries_no_class_information() -> None:
    data = render_split("train", 300, 64, 6, seed=0)
    areas = data["mask"].flatten(1).sum(1).float()
    lo, hi = ((64 * s) ** 2 for s in OBJECT_SCALE)  # sqrt(area) as a fraction of the image side
    assert areas.min() > 0.85 * lo and areas.max() < 1.15 * hi
    means = torch.stack([areas[data["label"] == k].mean() for k in range(6)])
    assert means.max() / means.min() < 1.2
    circles = data["label"] == 0  # a disc fills pi/4 of its square box
    x0, y0, x1, y1 = data["box"][circles].T
    assert torch.allclose(x1 - x0, y1 - y0, atol=1)
    assert torch.allclose(areas[circles] / ((x1 - x0) * (y1 - y0)), torch.tensor(np.pi / 4), atol=0.08)


def test_background_does_not_depend_on_the_class() -> None:
    """The same seed with another label changes only the pixels near the object."""
    for i in range(10):
        renders = [render_image(np.random.default_rng([0, 0, i]), label, 64) for label in range(6)]
        near = np.any([_dilate(torch.from_numpy(mask), 2).numpy() for _, mask in renders], axis=0)
        for image, _ in renders[1:]:
            assert np.array_equal(image[:, ~near], renders[0][0][:, ~near])


def test_labels(dm: ShapesDataModule) -> None:
    for split in SPLITS:
        labels = dm.dataset(split).data["label"]
        assert labels.min() >= 0 and labels.max() < 4
        assert torch.bincount(labels, minlength=4).tolist() == [len(labels) // 4] * 4


@pytest.mark.parametrize(("image_size", "num_classes"), [(32, 2), (48, 6), (80, 3)])
def test_configurable(image_size: int, num_classes: int) -> None:
    dm = ShapesDataModule(image_size=image_size, num_classes=num_classes, num_train=13, num_val=7, num_test=5)
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}  # fit renders only what it needs
    dm.setup("test")
    assert [len(dm.dataset(s)) for s in SPLITS] == [13, 7, 5]
    assert dm.input_size == (3, image_size, image_size)
    assert dm.class_names == list(SHAPE_NAMES[:num_classes])
    data = _all(dm, "train")
    assert data["image"].shape == (13, 3, image_size, image_size)
    assert data["mask"].shape == data["box_mask"].shape == (13, image_size, image_size)
    assert set(data["label"].tolist()) == set(range(num_classes))
    assert data["mask"].flatten(1).any(1).all()


def test_normalisation_round_trip(dm: ShapesDataModule) -> None:
    batch = next(iter(dm.val_dataloader()))
    raw = dm.dataset("val").data["image"][:16].float() / 255
    restored = dm.denormalize(batch["image"])
    assert restored.min() >= 0 and restored.max() <= 1
    assert torch.allclose(restored, raw, atol=1e-6)
    assert (batch["image"].mean() - 0).abs() < 1  # roughly centred by mean=0.5, std=0.25
    image, _ = render_image(np.random.default_rng([0, SPLITS["val"], 0]), 0, 64)
    assert torch.allclose(restored[0], torch.from_numpy(image), atol=0.5 / 255 + 1e-6)


def test_dihedral_augment(dm: ShapesDataModule) -> None:
    batch = next(iter(dm.val_dataloader()))
    n, size = len(batch["label"]), 64
    out = dihedral_augment(batch, torch.arange(n) % 8)
    assert torch.equal(out["label"], batch["label"])
    for image, mask in zip(out["image"], out["mask"], strict=True):  # image and mask move together
        assert image[:, ~_dilate(~mask, 1)].std(1).max() < 0.25  # 0.06 in [0, 1] units
    assert torch.equal(out["box"], mask_to_box(out["mask"]))
    assert torch.equal(out["box_mask"], box_to_mask(out["box"], size, size))
    x0, y0, x1, y1 = batch["box"].T
    rotated = dihedral_augment(batch, torch.ones(n, dtype=torch.long))  # 90 degrees counter-clockwise
    assert torch.equal(rotated["box"], torch.stack([y0, size - x1, y1, size - x0], 1))
    flipped = dihedral_augment(batch, torch.full((n,), 4))  # left-right
    assert torch.equal(flipped["box"], torch.stack([size - x1, y0, size - x0, y1], 1))
    back = batch
    for _ in range(4):
        back = dihedral_augment(back, torch.ones(n, dtype=torch.long))
    for key in batch:
        assert torch.equal(back[key], batch[key]), key
    assert dm.on_after_batch_transfer(batch, 0) is batch  # only while a trainer trains


def test_empty_images_only_in_training_and_independent_of_the_object_images() -> None:
    dm = ShapesDataModule(**SMALL, num_empty=8)
    train = dm.dataset("train").data
    assert len(train["label"]) == 48 + 8
    assert train["mask"][:48].flatten(1).any(1).all() and not train["mask"][48:].any()
    assert not box_to_mask(train["box"][48:], 64, 64).any()  # empty boxes
    assert torch.bincount(train["label"][48:], minlength=4).tolist() == [2] * 4  # balanced placeholders
    plain = ShapesDataModule(**SMALL).dataset("train").data
    for key in plain:  # the object images are those of num_empty=0
        assert torch.equal(train[key][:48], plain[key]), key
    assert all(len(dm.dataset(s)) == 24 for s in ("val", "test"))
    assert all(dm.dataset(s).data["mask"].flatten(1).any(1).all() for s in ("val", "test"))
    # image j of the empties depends on (seed, j) only, not on num_train
    other = render_split("train", 5, 64, 4, seed=0, num_empty=3)
    assert torch.equal(other["image"][5:], train["image"][48:51])
    image, mask = render_image(np.random.default_rng([0, EMPTY_SPLIT_ID, 2]), None, 64)
    assert not mask.any() and np.abs(image * 255 - train["image"][50].numpy()).max() <= 0.5 + 1e-3
    assert len(torch.unique(train["image"][48:].flatten(1), dim=0)) == 8
    # the background alone: the same pixels as an object image from the same generator, away from the object
    with_object, object_mask = render_image(np.random.default_rng([0, EMPTY_SPLIT_ID, 2]), 1, 64)
    far = ~_dilate(torch.from_numpy(object_mask), 2).numpy()
    assert np.abs(with_object[:, far] - image[:, far]).max() < 0.2  # only the i.i.d. pixel noise differs


def test_relabel_empty_draws_uniform_labels_for_empty_images_only() -> None:
    n = 4000
    mask = torch.zeros(n, 8, 8, dtype=torch.bool)
    mask[: n // 2, 2, 3] = True  # the first half has objects
    label = torch.arange(n) % 3
    batch = {"label": label, "mask": mask}
    torch.manual_seed(0)
    out = relabel_empty(batch, 3)
    assert torch.equal(out["label"][: n // 2], label[: n // 2]) and torch.equal(batch["label"], label)
    freq = torch.bincount(out["label"][n // 2 :], minlength=3).float() / (n // 2)
    assert (freq - 1 / 3).abs().max() < 0.04  # 4 standard errors
    assert not torch.equal(out["label"][n // 2 :], label[n // 2 :])
    again = relabel_empty(batch, 3)  # drawn anew at each use
    assert not torch.equal(again["label"], out["label"])
    full = {"label": label[:4], "mask": mask[:4]}
    assert relabel_empty(full, 3) is full  # no empty image: nothing to do


def test_training_batches_relabel_empty_images_and_augment() -> None:
    from types import SimpleNamespace

    dm = ShapesDataModule(**SMALL, num_empty=48)
    data = _all(dm, "train")
    batch = {k: v[40:56] for k, v in data.items()}  # 8 object images, 8 empty ones
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch
    dm.trainer = SimpleNamespace(training=True)
    labels = torch.stack([dm.on_after_batch_transfer(batch, 0)["label"] for _ in range(20)])
    assert (labels[:, :8] == batch["label"][:8]).all()  # objects keep their class
    assert all(len(labels[:, j].unique()) > 1 for j in range(8, 16))  # empties get fresh labels


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "circle, square, triangle, cross, star, hexagon"),
        ({"num_classes": 7}, r"2\.\.6"),
        ({"num_classes": True}, "num_classes"),
        ({"image_size": 31}, "image_size must be an integer >= 32"),
        ({"image_size": 64.0}, "image_size"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"num_test": 0}, "num_test"),
        ({"num_empty": -1}, "num_empty"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ShapesDataModule(**kwargs)
