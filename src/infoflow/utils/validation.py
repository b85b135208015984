"""The one place where user input is checked: settings, image batches, class targets and attribution maps.

Every check raises a `infoflow.errors.UserError` subclass whose one-line message names the setting or argument,
the problem and the valid range or choices: `ConfigError` for settings (config values, API arguments),
`InputError` for tensors. Plain exceptions are left for broken internal invariants.

The rules for tensors, shared by every attribution method, `explain()`, the metrics, the estimator and SID:

- images are a float tensor (N, C, H, W) of the model's dtype (float32 unless the model was converted, e.g.
  with ``.double()``); uint8 or float64 images are refused rather than converted, since a uint8 image is
  also not normalised;
- every value is finite and at most `MAX_ABS_PIXEL` in magnitude: normalised images ``(x - mean) / std``
  with ``x`` in [0, 1] stay within a few units, so a larger value is a mistake (e.g. 1e30), not an image;
- N = 0 is valid: methods return an empty (0, H, W) map without running the model;
- targets are integer class indices: an int, a list of ints or an integer tensor, with one entry per image
  or one for all. Floats (also whole-valued ones such as 1.0) and bools are refused, never truncated;
- attribution maps are (N, H, W), one per image, with finite values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from infoflow.errors import ConfigError, InputError

#: the largest |value| accepted in a normalised image
MAX_ABS_PIXEL = 1e4


# ---------------------------------------------------------------- settings


def check_trainer(cfg: Any) -> None:
    """A GPU trainer (``trainer=gpu|ddp``) on a machine where torch sees no CUDA GPU stops here."""
    trainer = cfg.get("trainer") or {}
    if str(trainer.get("accelerator", "")) in ("gpu", "cuda") and not torch.cuda.is_available():
        ddp = "ddp" in str(trainer.get("strategy", ""))
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} needs a CUDA GPU, but torch sees none on this machine: use "
            + ("trainer=ddp_cpu (DDP over CPU processes)" if ddp else "trainer=cpu")
        )


def check_common(cfg: Any) -> None:
    """The settings of train.py and evaluate.py alike: beta and the trainer."""
    for owner in ("method", "task"):  # beta is owned by the method or task node (``beta=`` only feeds it)
        node = cfg.get(owner)
        if hasattr(node, "get") and node.get("beta") is not None:
            check_beta(node.beta, f"{owner}.beta")
    check_trainer(cfg)


def check_beta(beta: Any, name: str = "beta") -> float:
    """`beta` as a float; the one rule everywhere: a finite number >= 0 (0: no information penalty).

    Strings (also ``"10"``) and bools are refused, never converted."""
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta) or beta < 0:
        raise ConfigError(
            f"{name} must be a finite number >= 0 (0: no information penalty), in units of 1/k (e.g. {name}=10 "
            f"for 10/k), got {beta!r}"
        )
    return float(beta)


def check_count(value: Any, name: str) -> int:
    """`value` as an int >= 1 (a number of images, epochs, steps, ...); bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """`value`, which must be one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{name}={value}: not a valid choice; choose one of: {' | '.join(choices)}")
    return str(value)


def check_number(value: Any, name: str, minimum: float = 0.0, strict: bool = False) -> float:
    """`value` as a float: a finite number >= `minimum` (> `minimum` when `strict`); bools and strings are
    refused."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or (value <= minimum if strict else value < minimum)
    ):
        raise ConfigError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def check_count_or_auto(value: Any, name: str) -> int | str:
    """A count chosen by the user or by measurement: an int >= 1, or ``"auto"``."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 or 'auto', got {value!r}")
    return int(value)


def check_batch_size(value: Any, name: str = "batch_size") -> int | str:
    """A batch size: an int >= 1, or ``"auto"`` (chosen by timing candidates, see `infoflow.utils.autotune`)."""
    return check_count_or_auto(value, name)


def check_jobs(value: Any, name: str = "jobs") -> int | str:
    """A number of parallel worker processes: an int >= 1, or ``"auto"`` (one per usable CPU core)."""
    return check_count_or_auto(value, name)


def check_level(value: Any, name: str = "level") -> float:
    """A confidence level: a number strictly between 0 and 1 (e.g. 0.95); bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1 (e.g. 0.95), got {value!r}")
    return float(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A random seed: an int >= 0; bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


# ---------------------------------------------------------------- images and targets


def _indices(mask: torch.Tensor, noun: str = "image", limit: int = 10) -> str:
    """'images 0, 3' / 'image 2' for the True rows of `mask` (N,), at most `limit` listed."""
    idx = mask.nonzero().flatten().tolist()
    shown = ", ".join(map(str, idx[:limit])) + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")
    return f"{noun}{'s' if len(idx) > 1 else ''} {shown}"


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
        input_size: expected (C, H, W), or (H, W) when any number of channels is valid; None: any.
        dtype: expected floating dtype (the model's); any floating dtype when None.
        model: the model's name, for the messages.
        bound: the largest |value| accepted.
    """
    of = f"model {model!r}" if model else "the model"
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    size = tuple(input_size) if input_size is not None else None
    if size is None:
        shape = "(N, C, H, W)"
    else:
        shape = "(N, " + ("C, " if len(size) == 2 else "") + ", ".join(map(str, size)) + ")"
    if images.dim() != 4 or (size is not None and tuple(images.shape[4 - len(size):]) != size):
        raise InputError(f"{of} expects images of shape {shape}, got {tuple(images.shape)}")
    want = "float32" if dtype in (None, torch.float32) else str(dtype).removeprefix("torch.")
    if not images.is_floating_point() or (dtype is not None and images.dtype != dtype):
        raise InputError(
            f"{of} expects {want} images normalised as in training, got {str(images.dtype).removeprefix('torch.')}"
            + (": convert to float and normalise with the data set's mean and std" if not images.is_floating_point()
               else f": convert them with images.to(torch.{want})")
        )
    check_finite(images, "image", bound)


def check_finite(values: torch.Tensor, noun: str = "image", bound: float = math.inf) -> None:
    """Raise an `InputError` naming the rows of `values` (N, ...) that hold NaN, inf or values beyond ±`bound`
    (e.g. "image 1 contains NaN")."""
    if values.numel() == 0:
        return
    x = values.detach()
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
            problems.append(f"{_indices(mask, noun)} contain{'s' if n == 1 else ''} {what}")
    limit = f" (|x| <= {bound:g})" if math.isfinite(bound) else ""
    raise InputError(f"{'; '.join(problems)}: expected finite, normalised {noun}s{limit}")


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


# ---------------------------------------------------------------- maps and regions


def check_maps(maps: Any, shape: Sequence[int], what: str = "attribution maps") -> None:
    """Raise an `InputError` unless `maps` is a tensor of `shape` (e.g. (N, H, W) of the images, one map per
    image) with only finite values."""
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor of shape {tuple(shape)}, got {type(maps).__name__}")
    if tuple(maps.shape) != tuple(shape):
        raise InputError(f"expected {what} of shape {tuple(shape)} (one (H, W) map per image), got {tuple(maps.shape)}")
    if maps.is_floating_point() and not torch.isfinite(maps).all():
        bad = int((~torch.isfinite(maps)).flatten(1).any(1).sum()) if maps.dim() > 1 else 1
        raise InputError(f"{what} contain NaN or infinite values ({bad} of {maps.shape[0]} maps)")


def check_regions(regions: Any, shape: Sequence[int], what: str = "region masks") -> torch.Tensor:
    """Validate region masks (N, H, W) (boxes drawn as masks, or object masks); return them as bool.

    Raises an `InputError` for a wrong shape, an empty region (nothing to point at) or a region covering the
    whole image (every map would score 1)."""
    if not isinstance(regions, torch.Tensor) or tuple(regions.shape) != tuple(shape):
        got = tuple(regions.shape) if isinstance(regions, torch.Tensor) else type(regions).__name__
        raise InputError(f"expected {what} of shape {tuple(shape)} (boxes or object masks), got {got}")
    regions = regions.bool()
    area = regions.flatten(1).sum(1)
    if (area == 0).any():
        raise InputError(f"{int((area == 0).sum())} image(s) have an empty region (no box or mask pixel): "
                         "drop them, or the metric has nothing to point at")
    if (area == regions[0].numel()).any():
        raise InputError(f"{int((area == regions[0].numel()).sum())} image(s) have a region covering the whole "
                         "image: every map would score 1; drop them")
    return regions


def check_batch(images: Any, target: Any, maps: Any, size: Sequence[int]) -> torch.Tensor:
    """What a perturbation metric gets: images (N, C, H, W) of image size `size` = (H, W), maps (N, H, W) (when
    not None) and targets; returns the targets as (N,) int64 on the images' device."""
    check_images(images, tuple(size))
    if maps is not None:
        check_maps(maps, (images.shape[0], *size))
    return as_target(target, images.shape[0], images.device)


# ---------------------------------------------------------------- models


def check_module_path(module: torch.nn.Module, path: Any, name: str) -> str:
    """`path`, which must name a submodule of `module` (a ``named_modules()`` path); the error lists the
    closest paths."""
    import difflib

    paths = [p for p, _ in module.named_modules() if p]
    if not isinstance(path, str) or path not in paths:
        close = difflib.get_close_matches(str(path), paths, n=5, cutoff=0.4) or paths[:5]
        raise ConfigError(f"{name}={path!r}: no such module in {type(module).__name__}; close module paths: "
                          f"{', '.join(close)} (see model.named_modules())")
    return path


def check_feature(feature: Any, name: str) -> str:
    """``"map"`` for a (N, C, h, w) tensor, ``"tokens"`` for a (N, L, C) sequence; else a `ConfigError`."""
    if isinstance(feature, torch.Tensor) and feature.is_floating_point() and feature.dim() == 4:
        return "map"
    if isinstance(feature, torch.Tensor) and feature.is_floating_point() and feature.dim() == 3:
        return "tokens"
    got = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature).__name__
    raise ConfigError(f"layer {name}: its output must be a feature map (N, C, h, w) or a token sequence "
                      f"(N, L, C), got {got}; name a module whose output is one")


def check_logits(logits: Any, batch: int, num_classes: int, model: str) -> None:
    """Raise a `ConfigError` unless `logits` is a (batch, num_classes) float tensor."""
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point()
            and tuple(logits.shape) == (batch, num_classes)):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model {model!r} must return logits of shape (N, num_classes) = ({batch}, {num_classes}) "
                          f"for images (N, C, H, W), got {got}; check num_classes and that forward returns one tensor")


def check_input_size(value: Any, name: str = "input_size") -> tuple[int, int, int]:
    """`value` as a (C, H, W) tuple of ints >= 1."""
    if (isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ConfigError(f"{name} must be (C, H, W), three integers >= 1, e.g. (3, 224, 224), got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))
