"""Weights of the built-in default models, trained on the built-in data on first use and cached.

Like torchvision's weights, they are fetched (here: trained, with a progress bar, in a few minutes on
a CPU) the first time they are asked for and then loaded from the cache root `utils.cache.cache_dir()`:
``paths.cache_dir`` in the entry points, whose default is ``$INFOFLOW_CACHE``, else ``~/.cache/infoflow``.
A corrupt cached file is deleted and retrained. Each model with default weights has its recipe in
`DEFAULTS`, and its registry entry (`ModelEntry.default_weights`) loads them with `default_state_dict`.
Training needs Lightning and the classifier task, which sit above the model zoo: `infoflow.tasks` registers
the trainers in `TRAINERS` when it is imported (the entry points import it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from infoflow.errors import ConfigError
from infoflow.models.entry import MODELS
from infoflow.utils import cache
from infoflow.utils.checkpoint import load_state_dict_file

#: bump "version" when the default data, model or recipe change, so stale caches are not reused.
#: num_empty: no-object training images with fresh random labels, so that the model answers "no object"
#: (and the Per-Sample Bottleneck's noise) with equal probabilities for all shapes, not with one of them.
#: threads: CPU threads for training; the weights' bits depend on it (how reductions are split), so it is fixed.
SHAPESNET_RECIPE = {"version": 4, "epochs": 12, "lr": 4e-3, "seed": 0, "batch_size": 64, "num_empty": 1000,
                    "threads": 2}
SHAPESVIT_RECIPE = {"version": 2, "epochs": 25, "lr": 2e-3, "seed": 0, "batch_size": 64, "num_empty": 1000,
                    "threads": 2}

#: a larger trained network for the precision bounds (`tests/test_precision.py`, the benchmarks): torchvision's
#: ResNet-18 on 128x128 shapes images
RESNET18_SHAPES_RECIPE = {"version": 1, "epochs": 6, "lr": 2e-3, "seed": 0, "batch_size": 64, "num_empty": 1000,
                          "threads": 2, "image_size": 128}


#: zoo model name -> the recipe of its default weights (whose items name the weights' version)
DEFAULTS: dict[str, dict] = {"shapesnet": SHAPESNET_RECIPE, "shapesvit": SHAPESVIT_RECIPE,
                             "resnet18": RESNET18_SHAPES_RECIPE}
#: zoo model name -> ``trainer(num_classes) -> state dict`` of its default weights (registered by infoflow.tasks)
TRAINERS: dict[str, Callable[[int], dict[str, torch.Tensor]]] = {}


def default_weights_image_size(model: str) -> int:
    """Height and width (px) of the shapes images that `model`'s default weights were trained on."""
    return int(DEFAULTS[model].get("image_size", 64))


def cache_dir() -> Path:
    """The cache root (see `infoflow.utils.cache.cache_dir`)."""
    return cache.cache_dir()


def default_weights_path(num_classes: int | str = 4, root: str | Path | None = None, model: str = "shapesnet") -> Path:
    """File of `model`'s default weights for `num_classes` classes under `root` (default: `cache_dir()`)."""
    name = f"{model}-c{num_classes}-{default_weights_version(model)}.pt"
    return Path(cache_dir() if root is None else root) / name


def _load_checked(path: Path, model: str, num_classes: int) -> dict[str, torch.Tensor]:
    """The state dict in `path`, checked to fit zoo `model` with `num_classes` classes (keys and shapes)."""
    state = load_state_dict_file(path)
    MODELS.get(model)().build(num_classes).load_state_dict(state)  # raises on wrong keys or shapes
    return state


def default_state_dict(model: str, num_classes: int = 4, root: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The default weights of zoo `model` for `num_classes` shapes data, trained and cached on first use.

    Args:
        root: cache root; default `cache_dir()`.
    """
    if model not in DEFAULTS:
        raise ConfigError(f"weights=default: model {model} has no default weights; models with them: "
                          f"{', '.join(DEFAULTS)}")
    path = default_weights_path(num_classes, root, model)
    state = cache.load_cached(path, lambda p: _load_checked(p, model, num_classes))
    if state is not None:
        return state
    if model not in TRAINERS:
        raise ConfigError(f"the default weights of {model} are not cached in {path.parent} and their trainer is "
                          "not loaded: import infoflow.tasks first (the entry points do)")
    cache.ensure_writable(path.parent)
    with FileLock(f"{path}.lock"):  # processes that need them at once (a study's parallel units) train them once
        state = cache.load_cached(path, lambda p: _load_checked(p, model, num_classes))
        if state is None:
            print(f"[infoflow] training the default {model} on the built-in shapes data (first use; cached at {path})")
            state = TRAINERS[model](num_classes)
            cache.save_cached(state, path)
    return state


def default_weights_version(model: str = "shapesnet") -> str:
    """``v<recipe version>-<hash of the shapes generator's settings and the recipe>``: names `model`'s default
    weights, so that they, and statistics cached for them, never outlive a change of the data or recipe."""
    from infoflow.data import shapes

    if model not in DEFAULTS:
        raise ValueError(f"model {model!r} has no default weights; models with them: {', '.join(DEFAULTS)}")
    recipe = DEFAULTS[model]
    settings = [shapes.SHAPE_NAMES, shapes.OBJECT_SCALE, shapes.NUM_DISTRACTORS, shapes.MIN_CONTRAST,
                shapes.NOISE_STD, shapes.BACKGROUND_RANGE, recipe]
    if model != "shapesnet":  # shapesnet's version string predates the model name: keep its caches valid
        settings.append(model)
    return f"v{recipe['version']}-{hashlib.sha1(repr(settings).encode()).hexdigest()[:8]}"


cache.WEIGHTS_VERSIONS["default"] = default_weights_version
