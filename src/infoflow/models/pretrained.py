"""Weights of the built-in default model, trained on the built-in data on first use and cached.

Like torchvision's weights, they are fetched (here: trained, with a progress bar, in a few minutes on
a CPU) the first time they are asked for and then loaded from the cache root `utils.cache.cache_dir()`:
``paths.cache_dir`` in the entry points, whose default is ``$INFOFLOW_CACHE``, else ``~/.cache/infoflow``.
A corrupt cached file is deleted and retrained. Training needs Lightning and the
classifier task, which sit above the model zoo: `TRAINER` names the function by its dotted path, imported
only when the weights are not cached.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch

from infoflow.utils import cache
from infoflow.utils.checkpoint import atomic_save, load_state_dict_file

#: ``module:function`` that trains the default weights: ``train(num_classes) -> state dict``
TRAINER = "infoflow.tasks.default_weights:train_shapesnet"
#: bump "version" when the default data, model or recipe change, so stale caches are not reused.
#: num_empty: no-object training images with fresh random labels, so that the model answers "no object"
#: (and the Per-Sample Bottleneck's noise) with equal probabilities for all shapes, not with one of them.
#: threads: CPU threads for training; the weights' bits depend on it (how reductions are split), so it is fixed.
SHAPESNET_RECIPE = {"version": 4, "epochs": 12, "lr": 4e-3, "seed": 0, "batch_size": 64, "num_empty": 1000,
                    "threads": 2}


def cache_dir() -> Path:
    """The cache root (see `infoflow.utils.cache.cache_dir`)."""
    return cache.cache_dir()


def default_weights_path(num_classes: int | str = 4, root: str | Path | None = None) -> Path:
    """File of the default ShapesNet weights for `num_classes` classes under `root` (default: `cache_dir()`)."""
    return Path(cache_dir() if root is None else root) / f"shapesnet-c{num_classes}-{default_weights_version()}.pt"


def _load_checked(path: Path, num_classes: int) -> dict[str, torch.Tensor]:
    """The state dict in `path`, checked to fit ShapesNet(`num_classes`) (keys and shapes)."""
    from infoflow.models.shapesnet import ShapesNet

    state = load_state_dict_file(path)
    ShapesNet(num_classes).load_state_dict(state)  # raises on missing/unexpected keys or wrong shapes
    return state


def shapesnet_default_state_dict(num_classes: int = 4, root: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The default ShapesNet weights for `num_classes` shapes data, trained and cached on first use.

    Args:
        root: cache root; default `cache_dir()`.
    """
    path = default_weights_path(num_classes, root)
    state = cache.load_cached(path, lambda p: _load_checked(p, num_classes))
    if state is None:
        cache.ensure_writable(path.parent)
        print(f"[infoflow] training the default shapesnet on the built-in shapes data (first use; cached at {path})")
        module, function = TRAINER.split(":")
        state = getattr(importlib.import_module(module), function)(num_classes)
        atomic_save(state, path)
    return state


def default_weights_version() -> str:
    """``v<recipe version>-<hash of the shapes generator's settings and the recipe>``: names the default
    weights, so that they, and statistics cached for them, never outlive a change of the data or recipe."""
    from infoflow.data import shapes

    settings = [shapes.SHAPE_NAMES, shapes.OBJECT_SCALE, shapes.NUM_DISTRACTORS, shapes.MIN_CONTRAST,
                shapes.NOISE_STD, shapes.BACKGROUND_RANGE, SHAPESNET_RECIPE]
    return f"v{SHAPESNET_RECIPE['version']}-{hashlib.sha1(repr(settings).encode()).hexdigest()[:8]}"


cache.WEIGHTS_VERSIONS["default"] = default_weights_version
