"""Concentration of information discarding: mean pixel SID outside the object minus mean inside.

Positive values mean the background is discarded more than the object. Object pixels come from a
segmentation mask, or from the union of bounding boxes when a data set has no masks (`object_mask`).
The value is undefined (NaN) for an image whose mask is empty or covers the whole image.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def object_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The batch's (N, H, W) bool object mask: ``mask`` if present, else ``box_mask``, else None."""
    for key in ("mask", "box_mask"):
        if batch.get(key) is not None:
            return batch[key]
    return None


def concentration(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """E_{i outside}[H_i] - E_{i inside}[H_i] per image (and layer), in the maps' unit (nats).

    Args:
        maps: (N, H, W) or (N, L, H, W) pixel-wise SID maps.
        mask: (N, H, W) bool (or 0/1) object mask at the maps' resolution.
    Returns:
        (N,) or (N, L); NaN where the mask is empty or full.
    """
    if maps.dim() not in (3, 4):
        raise ValueError(f"maps must be (N, H, W) or (N, L, H, W), got {tuple(maps.shape)}")
    if mask.dim() != 3 or mask.shape[0] != maps.shape[0] or mask.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the maps {tuple(maps.shape)}: "
            f"expected ({maps.shape[0]}, {maps.shape[-2]}, {maps.shape[-1]})"
        )
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("mask must be bool or hold only 0 and 1")
        mask = mask.bool()
    inside = mask.to(maps.device, maps.dtype)
    if maps.dim() == 4:
        inside = inside[:, None]
    outside = 1 - inside
    dims = (-2, -1)
    mean_in = (maps * inside).sum(dims) / inside.sum(dims)
    mean_out = (maps * outside).sum(dims) / outside.sum(dims)
    return mean_out - mean_in
