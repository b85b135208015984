"""Tiny fake copies of real dataset layouts on disk, for tests (no downloads needed).

Each ``make_*`` writes into `root` and returns the path to give the datamodule. Pictures are simple on
purpose, so tests can check what the datamodules do with them:
- imagefolder / ImageNet train: solid images in `class_color` of their class;
- ImageNet val: black with white rectangles exactly at the XML boxes;
- CUB: black with a white off-centre ellipse, its box in bounding_boxes.txt and its segmentation.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: inclusive pixel indices

IMAGENET_BBOX_DIR = "bbox_val"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct solid RGB colour per class index."""
    return (40 + 50 * (label % 4), 200 - 30 * (label % 5), 60 + 70 * (label % 3))


def make_imagefolder(
    root: Path,
    classes: Sequence[str],
    n_per_class: int = 3,
    size: tuple[int, int] = (40, 30),
    ext: str = ".png",
) -> Path:
    """``root/<class>/<i><ext>``: `n_per_class` solid images of `size` = (W, H) in `class_color`."""
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.new("RGB", size, class_color(label)).save(root / name / f"{name}_{i}{ext}")
    return root


def _imagenet_xml(stem: str, wnid: str, size: tuple[int, int], boxes: Sequence[Box]) -> str:
    objects = "".join(
        f"<object><name>{wnid}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><folder>val</folder><filename>{stem}</filename><source><database>ILSVRC_2012</database>"
        f"</source><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{objects}</annotation>"
    )


def make_imagenet(
    root: Path,
    wnids: Sequence[str] = ("n01440764", "n01443537", "n01484850"),
    n_train: int = 2,
    n_val: int = 2,
    size: tuple[int, int] = (120, 80),
    boxes: Sequence[Box] = ((30, 10, 89, 59),),
    with_xml: bool = True,
    xml_scale: int = 1,
) -> Path:
    """``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/ILSVRC2012_val_*.JPEG`` and ``root/bbox_val/*.xml``.

    Train images are solid `class_color` of their class index (sorted wnid order); val images of `size` = (W, H) are black with white `boxes`
    (inclusive pixel indices), which their XML lists. `xml_scale` > 1 writes the XML for an original
    `xml_scale` times larger, as for a pre-resized copy of ImageNet.
    """
    val_id = 0
    for wnid in wnids:
        label = sorted(wnids).index(wnid)
        for split in ("train", "val"):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(n_train):
            Image.new("RGB", size, class_color(label)).save(
                root / "train" / wnid / f"{wnid}_{i}.JPEG", quality=95
            )
        for _ in range(n_val):
            val_id += 1
            stem = f"ILSVRC2012_val_{val_id:08d}"
            image = Image.new("RGB", size)
            draw = ImageDraw.Draw(image)
            for box in boxes:
                draw.rectangle(box, fill=(255, 255, 255))
            image.save(root / "val" / wnid / f"{stem}.JPEG", quality=95)
            if with_xml:
                (root / IMAGENET_BBOX_DIR).mkdir(exist_ok=True)
                s = xml_scale
                xml_boxes = [(s * x0, s * y0, s * (x1 + 1) - 1, s * (y1 + 1) - 1) for x0, y0, x1, y1 in boxes]
                xml = _imagenet_xml(stem, wnid, (s * size[0], s * size[1]), xml_boxes)
                (root / IMAGENET_BBOX_DIR / f"{stem}.xml").write_text(xml)
    return root


def cub_box(image_id: int, size: tuple[int, int]) -> Box:
    """The (inclusive) box of the bird ellipse in fake CUB image `image_id` (1-based)."""
    w, h = size
    x0, y0 = 3 + (image_id % 4) * 3, 4 + (image_id % 3) * 2
    return (x0, y0, x0 + w // 2 + image_id % 5, y0 + h // 2)


def make_cub(
    root: Path,
    n_classes: int = 3,
    n_per_class: int = 4,
    size: tuple[int, int] = (90, 60),
    segmentations: str | None = "segmentations",
) -> Path:
    """``root/CUB_200_2011/...`` with the official text files, and ``root/<segmentations>/`` PNGs.

    Image ids run 1.. in class order; odd ids are training images (``train_test_split.txt``).
    Each image of `size` = (W, H) is black with a white ellipse inside `cub_box`; its segmentation is 255
    on the ellipse and a soft 102 (< 0.5, not object) on the rest of the box. `segmentations` is the
    folder under `root` for them (e.g. ``"CUB_200_2011/segmentations"``), None for none.
    """
    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[str]] = {
        k: [] for k in ("images", "image_class_labels", "train_test_split", "bounding_boxes")
    }
    classes = [f"{c + 1:03d}.Bird_{c}" for c in range(n_classes)]
    image_id = 0
    for c, name in enumerate(classes):
        (base / "images" / name).mkdir(exist_ok=True)
        if segmentations is not None:
            (root / segmentations / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            image_id += 1
            rel = f"{name}/Bird_{c}_{i:04d}"
            box = cub_box(image_id, size)
            image = Image.new("RGB", size)
            ImageDraw.Draw(image).ellipse(box, fill=(255, 255, 255))
            image.save(base / "images" / f"{rel}.jpg", quality=95)
            if segmentations is not None:
                seg = Image.new("L", size)
                ImageDraw.Draw(seg).rectangle(box, fill=102)
                ImageDraw.Draw(seg).ellipse(box, fill=255)
                seg.save(root / segmentations / f"{rel}.png")
            x0, y0, x1, y1 = box
            tables["images"].append(f"{image_id} {rel}.jpg")
            tables["image_class_labels"].append(f"{image_id} {c + 1}")
            tables["train_test_split"].append(f"{image_id} {image_id % 2}")
            tables["bounding_boxes"].append(f"{image_id} {x0}.0 {y0}.0 {x1 - x0 + 1}.0 {y1 - y0 + 1}.0")
    tables["classes"] = [f"{c + 1} {name}" for c, name in enumerate(classes)]
    for table, lines in tables.items():
        (base / f"{table}.txt").write_text("\n".join(lines) + "\n")
    return root


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, as in the original CIFAR pickles: loading gives
    ``b'data'`` keys with ``encoding='bytes'`` and ``'data'`` with ``encoding='latin1'`` (torchvision)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string


def _dump_py2(obj: object, path: Path) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def make_cifar10(root: Path, n_per_batch: int = 4, n_test: int = 6, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` with random images.

    Same pickles as the real files: dicts with ``data`` ((N, 3072) uint8, R then G then B planes of
    32x32), ``labels``, ``batch_label``, ``filenames``; ``batches.meta`` has ``label_names``.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = [(f"data_batch_{i}", f"training batch {i} of 5", n_per_batch) for i in range(1, 6)]
    for name, batch_label, n in [*batches, ("test_batch", "testing batch 1 of 1", n_test)]:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {
            "batch_label": batch_label,
            "labels": labels,
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"{CIFAR10_CLASSES[y]}_s_{k:06d}.png" for k, y in enumerate(labels)],
        }
        _dump_py2(batch, folder / name)
    _dump_py2(
        {"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072},
        folder / "batches.meta",
    )
    return root
