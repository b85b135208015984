"""Object masks and their tight bounding boxes, in pixel-edge coordinates."""

from __future__ import annotations

import torch

from infoflow.data.boxes import box_masks


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool non-empty masks -> (..., 4) float [x0, y0, x1, y1] tight boxes in px.

    Pixel (row r, col c) spans [c, c+1) x [r, r+1), so the box covers cols x0..x1-1 and rows y0..y1-1.
    """
    cols, rows = mask.any(dim=-2), mask.any(dim=-1)
    idx_w = torch.arange(mask.shape[-1], device=mask.device)
    idx_h = torch.arange(mask.shape[-2], device=mask.device)
    big = max(mask.shape[-2:])
    x0 = torch.where(cols, idx_w, big).amin(-1)
    x1 = torch.where(cols, idx_w, -1).amax(-1) + 1
    y0 = torch.where(rows, idx_h, big).amin(-1)
    y1 = torch.where(rows, idx_h, -1).amax(-1) + 1
    return torch.stack([x0, y0, x1, y1], dim=-1).float()


def box_to_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 4) [x0, y0, x1, y1] boxes in px -> (..., H, W) bool filled box masks."""
    return box_masks(box, (height, width))
