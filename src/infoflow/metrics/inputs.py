"""Input checks of the metrics added for users of Quantus and Captum: one clear `InputError` each."""

from __future__ import annotations

import torch

from infoflow.errors import InputError


def check_map_batch(maps: torch.Tensor, shape: tuple[int, ...], what: str = "attribution maps") -> None:
    """Raise InputError unless `maps` has `shape` (e.g. (N, H, W) of the images) and only finite values."""
    if tuple(maps.shape) != tuple(shape):
        raise InputError(f"expected {what} of shape {tuple(shape)} (one (H, W) map per image), got {tuple(maps.shape)}")
    if maps.is_floating_point() and not torch.isfinite(maps).all():
        bad = int((~torch.isfinite(maps)).flatten(1).any(1).sum()) if maps.dim() > 1 else 1
        raise InputError(f"{what} contain NaN or infinite values ({bad} of {maps.shape[0]} maps)")


def check_regions(regions: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Validate region masks (N, H, W) (boxes drawn as masks, or object masks); return them as bool.

    Raises InputError for a wrong shape, an empty region (nothing to point at) or a region covering the
    whole image (every map would score 1)."""
    if tuple(regions.shape) != tuple(shape):
        raise InputError(f"expected region masks of shape {tuple(shape)} (boxes or object masks), got "
                         f"{tuple(regions.shape)}")
    regions = regions.bool()
    area = regions.flatten(1).sum(1)
    if (area == 0).any():
        raise InputError(f"{int((area == 0).sum())} image(s) have an empty region (no box or mask pixel): "
                         "drop them, or the pointing game has nothing to point at")
    if (area == regions[0].numel()).any():
        raise InputError(f"{int((area == regions[0].numel()).sum())} image(s) have a region covering the whole "
                         "image: every map would score 1; drop them")
    return regions


def as_targets(target: torch.Tensor | int, n: int, device: torch.device) -> torch.Tensor:
    """(N,) int64 target class indices from an int or a tensor; InputError for float or misshaped targets."""
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise InputError(f"target has {t.numel()} entries for {n} images")
    return t


def check_images(images: torch.Tensor, size: tuple[int, int]) -> None:
    """Raise InputError unless `images` is (N, C, H, W) with (H, W) == size and finite."""
    if images.dim() != 4 or tuple(images.shape[2:]) != tuple(size):
        raise InputError(f"expected images (N, C, {size[0]}, {size[1]}), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise InputError("images contain NaN or infinite values")
