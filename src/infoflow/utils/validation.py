"""Checks of what users pass in: image batches and class targets. Bad input is an `InputError`, never NaN.

The rules, shared by every attribution method, `explain()`, the metrics and SID:

- images are a float tensor (N, C, H, W) of the model's dtype (float32 unless the model was converted, e.g.
  with ``.double()``); uint8 or float64 images are refused rather than converted, since a uint8 image is
  also not normalised;
- every value is finite and at most `MAX_ABS_PIXEL` in magnitude: normalised images ``(x - mean) / std``
  with ``x`` in [0, 1] stay within a few units, so a larger value is a mistake (e.g. 1e30), not an image;
- N = 0 is valid: methods return an empty (0, H, W) map without running the model;
- targets are integer class indices: an int, a list of ints or an integer tensor, with one entry per image
  or one for all. Floats (also whole-valued ones such as 1.0) and bools are refused, never truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from infoflow.errors import InputError

#: the largest |value| accepted in a normalised image
MAX_ABS_PIXEL = 1e4


def _indices(mask: torch.Tensor, limit: int = 10) -> str:
    """'images 0, 3' / 'image 2' for the True rows of `mask` (N,), at most `limit` listed."""
    idx = mask.nonzero().flatten().tolist()
    shown = ", ".join(map(str, idx[:limit])) + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")
    return f"image{'s' if len(idx) > 1 else ''} {shown}"


def check_images(
    images: Any,
    input_size: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    model: str | None = None,
    bound: float = MAX_ABS_PIXEL,
) -> None:
    """Raise an `InputError` unless `images` is a finite (N, C, H, W) batch (see the module docstring).

    Args:
        images: the batch to check; N may be 0.
        input_size: expected (C, H, W), if known.
        dtype: expected floating dtype (the model's); any floating dtype when None.
        model: the model's name, for the messages.
        bound: the largest |value| accepted.
    """
    of = f"model {model!r}" if model else "the model"
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    shape = "(N, " + ", ".join(map(str, input_size)) + ")" if input_size is not None else "(N, C, H, W)"
    if images.dim() != 4 or (input_size is not None and tuple(images.shape[1:]) != tuple(input_size)):
        raise InputError(f"{of} expects images of shape {shape}, got {tuple(images.shape)}")
    want = "float32" if dtype in (None, torch.float32) else str(dtype).removeprefix("torch.")
    if not images.is_floating_point() or (dtype is not None and images.dtype != dtype):
        raise InputError(
            f"{of} expects {want} images normalised as in training, got {str(images.dtype).removeprefix('torch.')}"
            + (": convert to float and normalise with the data set's mean and std" if not images.is_floating_point()
               else f": convert them with images.to(torch.{want})")
        )
    if images.numel() == 0:
        return
    x = images.detach()
    if bool(x.abs().amax() <= bound):  # NaN fails this comparison too
        return
    flat = x.flatten(1)
    problems = []
    for mask, what in (
        (flat.isnan().any(1), "NaN"),
        (flat.isinf().any(1), "inf"),
        ((flat.abs() > bound).any(1) & torch.isfinite(flat).all(1), f"values beyond ±{bound:g}"),
    ):
        if mask.any():
            n = int(mask.sum())
            problems.append(f"{_indices(mask)} contain{'s' if n == 1 else ''} {what}")
    raise InputError(f"{'; '.join(problems)}: expected finite, normalised images (|x| <= {bound:g})")


def as_target(
    target: Any,
    n: int,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    model: str | None = None,
) -> torch.Tensor:
    """One (N,) int64 class index per image from an int, a list of ints or an integer tensor.

    One entry is broadcast to all `n` images. Raises an `InputError` for float or bool targets, a length
    other than 1 or `n`, and (with `num_classes`) indices outside 0..num_classes-1.
    """
    if isinstance(target, torch.Tensor):
        t = target.detach()
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(
                f"targets are integer class indices (an int, a list of ints or an integer tensor), got {target!r}"
            ) from None
        if t.numel() == 0:  # [] is an int list with no entries
            t = t.long()
    check_class_indices(t, num_classes, model)
    t = t.to(device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        return t.expand(n)
    if t.numel() != n:
        raise InputError(
            f"target has {t.numel()} entries for {n} images: give one class index per image, or one for all"
        )
    return t


def check_class_indices(target: torch.Tensor, num_classes: int | None = None, model: str | None = None) -> None:
    """Raise an `InputError` unless `target` holds integer class indices in 0..num_classes-1."""
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        values = target.reshape(-1)[:8].tolist()
        raise InputError(
            f"targets are integer class indices, got {str(target.dtype).removeprefix('torch.')} values {values}"
            + (" (use .long() if they are whole numbers)" if target.is_floating_point() else "")
        )
    if num_classes is not None and target.numel() and (target.min() < 0 or target.max() >= num_classes):
        of = f"model {model!r}" if model else "the model"
        raise InputError(
            f"target out of range: {of} has {num_classes} classes (0..{num_classes - 1}),"
            f" got {target.reshape(-1).tolist()}"
        )
