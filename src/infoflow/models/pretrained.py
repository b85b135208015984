"""Weights of the built-in default model, trained on the built-in data on first use and cached.

Like torchvision's weights, they are fetched (here: trained, with a progress bar, in a few minutes on
a CPU) the first time they are asked for and then loaded from ``$INFOFLOW_CACHE`` (default
``~/.cache/infoflow``). Training needs Lightning and the classifier task, which sit above the model zoo:
`TRAINER` names the function by its dotted path, imported only when the weights are not cached.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from infoflow.utils.checkpoint import atomic_save, load_state_dict_file

#: ``module:function`` that trains the default weights: ``train(num_classes) -> state dict``
TRAINER = "infoflow.tasks.default_weights:train_shapesnet"
#: bump when the default data, model or recipe change, so stale caches are not reused
SHAPESNET_RECIPE = {"version": 3, "epochs": 12, "lr": 4e-3, "seed": 0, "batch_size": 64}


def cache_dir() -> Path:
    return Path(os.environ.get("INFOFLOW_CACHE", Path.home() / ".cache" / "infoflow"))


def shapesnet_default_state_dict(num_classes: int = 4) -> dict[str, torch.Tensor]:
    """The default ShapesNet weights for `num_classes` shapes data, trained and cached on first use."""
    path = cache_dir() / f"shapesnet-c{num_classes}-{default_weights_version()}.pt"
    if not path.is_file():
        print(f"[infoflow] training the default shapesnet on the built-in shapes data (first use; cached at {path})")
        module, function = TRAINER.split(":")
        atomic_save(getattr(importlib.import_module(module), function)(num_classes), path)
    return load_state_dict_file(path)


def default_weights_version() -> str:
    """``v<recipe version>-<hash of the shapes generator's settings and the recipe>``: names the default
    weights, so that they, and statistics cached for them, never outlive a change of the data or recipe."""
    import hashlib

    from infoflow.data import shapes

    settings = [shapes.SHAPE_NAMES, shapes.OBJECT_SCALE, shapes.NUM_DISTRACTORS, shapes.MIN_CONTRAST,
                shapes.NOISE_STD, shapes.BACKGROUND_RANGE, SHAPESNET_RECIPE]
    return f"v{SHAPESNET_RECIPE['version']}-{hashlib.sha1(repr(settings).encode()).hexdigest()[:8]}"
