"""Bounding boxes that follow an image through its transforms, and their pixel masks.

Boxes are ``torchvision.tv_tensors.BoundingBoxes`` in XYXY format with continuous pixel-edge
coordinates: pixel column ``j`` spans ``[j, j + 1)``, so a box covering pixel columns 3..5 is
``x0=3, x1=6``. The torchvision v2 transforms scale, crop and flip them exactly like the image;
`boxes_to_mask` then rasterises them at the output resolution.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torchvision import tv_tensors


def make_boxes(xyxy: torch.Tensor, canvas_size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """(K, 4) pixel-edge boxes on an image of `canvas_size` = (H, W), clamped to the image."""
    h, w = canvas_size
    xyxy = xyxy.to(torch.float32).reshape(-1, 4).clone()
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
    return tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(h, w))


def box_masks(boxes: torch.Tensor, canvas_size: tuple[int, int]) -> torch.Tensor:
    """(..., 4) XYXY pixel-edge boxes -> (..., H, W) bool, one filled mask per box; a pixel is in when its
    centre is."""
    h, w = canvas_size
    boxes = boxes.as_subclass(torch.Tensor)
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    xs = torch.arange(w, dtype=dtype, device=boxes.device) + 0.5
    ys = torch.arange(h, dtype=dtype, device=boxes.device) + 0.5
    in_x = (xs >= boxes[..., 0:1]) & (xs < boxes[..., 2:3])  # (..., W)
    in_y = (ys >= boxes[..., 1:2]) & (ys < boxes[..., 3:4])  # (..., H)
    return in_y[..., :, None] & in_x[..., None, :]


def boxes_to_mask(boxes: torch.Tensor, canvas_size: tuple[int, int]) -> torch.Tensor:
    """Union of (K, 4) XYXY pixel-edge boxes -> (H, W) bool; a pixel is in when its centre is."""
    return box_masks(boxes.as_subclass(torch.Tensor).reshape(-1, 4), canvas_size).any(dim=0)


def read_imagenet_boxes(xml_path: str | Path, image_size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """All object boxes of one ILSVRC bounding-box XML file, on an image of `image_size` = (W, H).

    The XML holds inclusive pixel indices (``xmax`` is the last pixel inside) for the image size in its
    ``<size>``; they are rescaled to `image_size` when that differs (e.g. a pre-resized copy of ImageNet).
    """
    root = ET.parse(xml_path).getroot()
    width, height = image_size
    size = root.find("size")
    xml_w = float(size.findtext("width")) if size is not None else width
    xml_h = float(size.findtext("height")) if size is not None else height
    boxes = []
    for box in root.iter("bndbox"):
        x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x0, y0, x1 + 1, y1 + 1])
    xyxy = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    xyxy *= torch.tensor([width / xml_w, height / xml_h] * 2)
    return make_boxes(xyxy, (height, width))
