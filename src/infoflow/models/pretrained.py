"""Weights of the built-in default model, trained on the built-in data on first use and cached.

Like torchvision's weights, they are fetched (here: trained, with a progress bar, in a few minutes on
a CPU) the first time they are asked for and then loaded from ``$INFOFLOW_CACHE`` (default
``~/.cache/infoflow``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from infoflow.utils.checkpoint import atomic_save, load_state_dict_file

#: bump "version" when the default data, model or recipe change, so stale caches are not reused.
#: num_empty: no-object training images with fresh random labels, so that the model answers "no object"
#: (and the Per-Sample Bottleneck's noise) with equal probabilities for all shapes, not with one of them.
#: threads: CPU threads for training; the weights' bits depend on it (how reductions are split), so it is fixed.
SHAPESNET_RECIPE = {"version": 4, "epochs": 12, "lr": 4e-3, "seed": 0, "batch_size": 64, "num_empty": 1000,
                    "threads": 2}


def cache_dir() -> Path:
    return Path(os.environ.get("INFOFLOW_CACHE", Path.home() / ".cache" / "infoflow"))


def shapesnet_default_state_dict(num_classes: int = 4) -> dict[str, torch.Tensor]:
    """The default ShapesNet weights for `num_classes` shapes data, trained and cached on first use."""
    path = cache_dir() / f"shapesnet-c{num_classes}-{default_weights_version()}.pt"
    if not path.is_file():
        print(f"[infoflow] training the default shapesnet on the built-in shapes data (first use; cached at {path})")
        atomic_save(train_shapesnet(num_classes), path)
    return load_state_dict_file(path)


def default_weights_version() -> str:
    """``v<recipe version>-<hash of the shapes generator's settings and the recipe>``: names the default
    weights, so that they, and statistics cached for them, never outlive a change of the data or recipe."""
    import hashlib

    from infoflow.data import shapes

    settings = [shapes.SHAPE_NAMES, shapes.OBJECT_SCALE, shapes.NUM_DISTRACTORS, shapes.MIN_CONTRAST,
                shapes.NOISE_STD, shapes.BACKGROUND_RANGE, SHAPESNET_RECIPE]
    return f"v{SHAPESNET_RECIPE['version']}-{hashlib.sha1(repr(settings).encode()).hexdigest()[:8]}"


def train_shapesnet(num_classes: int, **overrides) -> dict[str, torch.Tensor]:
    """Train ShapesNet on the default ShapesDataModule with Lightning, seeded, with deterministic kernels, on
    the CPU with a fixed number of threads; return its state dict. Repeated runs give the same bits; other
    machines should too when their torch build and CPU instruction set (oneDNN/BLAS kernels) are the same."""
    import pytorch_lightning as pl

    from infoflow.data.shapes import ShapesDataModule
    from infoflow.models.shapesnet import ShapesNet
    from infoflow.tasks.classifier import ClassifierModule
    from infoflow.utils.determinism import make_deterministic

    recipe = {**SHAPESNET_RECIPE, **overrides}
    make_deterministic(recipe["seed"])
    data = ShapesDataModule(num_classes=num_classes, batch_size=recipe["batch_size"], seed=recipe["seed"],
                            num_empty=recipe["num_empty"])
    module = ClassifierModule(ShapesNet(num_classes), num_classes, lr=recipe["lr"])
    # always on the CPU, so that a machine with a GPU gets the same weights as one without
    trainer = pl.Trainer(
        max_epochs=recipe["epochs"], accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, deterministic="warn",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    try:
        trainer.fit(module, datamodule=data)
    finally:
        torch.set_num_threads(threads)
    acc = trainer.test(module, datamodule=data, verbose=False)[0]["test/acc"]
    print(f"[infoflow] default shapesnet: test accuracy {acc:.3f}")
    return {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
