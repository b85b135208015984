"""Training of the built-in default models' weights (`infoflow.models.pretrained` calls it on first use)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from infoflow.data.shapes import ShapesDataModule
from infoflow.models.entry import MODELS
from infoflow.models.pretrained import DEFAULTS, TRAINERS
from infoflow.tasks.classifier import ClassifierModule
from infoflow.utils.determinism import make_deterministic


def train_default(model: str, num_classes: int, **overrides) -> dict[str, torch.Tensor]:
    """Train zoo `model` from scratch on the default ShapesDataModule with its recipe in
    `infoflow.models.pretrained.DEFAULTS` (items overridden by `overrides`); return its state dict."""
    recipe = {**DEFAULTS[model], **overrides}
    make_deterministic(recipe["seed"])
    data = ShapesDataModule(num_classes=num_classes, batch_size=recipe["batch_size"], seed=recipe["seed"],
                            num_empty=recipe.get("num_empty", 0), image_size=recipe.get("image_size", 64))
    network = MODELS.get(model)().build(num_classes)
    extra = {"weight_decay": recipe["weight_decay"]} if "weight_decay" in recipe else {}
    module = ClassifierModule(network, num_classes, lr=recipe["lr"], **extra)
    # always on the CPU, with a fixed thread count, so that every machine gets the same weights
    trainer = pl.Trainer(
        max_epochs=recipe["epochs"], accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, deterministic="warn",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.get("threads", threads))
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data)
    finally:
        torch.set_num_threads(threads)
    acc = trainer.test(module, datamodule=data, verbose=False)[0]["test/acc"]
    print(f"[infoflow] default {model}: test accuracy {acc:.3f} ({time.perf_counter() - start:.0f} s)")
    return {k: v.detach().cpu() for k, v in module.model.state_dict().items()}


def train_shapesnet(num_classes: int, **overrides) -> dict[str, torch.Tensor]:
    """The default ShapesNet weights (`train_default`)."""
    return train_default("shapesnet", num_classes, **overrides)


def train_shapesvit(num_classes: int, **overrides) -> dict[str, torch.Tensor]:
    """The default ShapesViT weights (`train_default`)."""
    return train_default("shapesvit", num_classes, **overrides)


def train_resnet18(num_classes: int, **overrides) -> dict[str, torch.Tensor]:
    """torchvision's ResNet-18 trained on 128x128 shapes images (`train_default`): ``weights=default``."""
    return train_default("resnet18", num_classes, **overrides)


# looked up at call time, so that a replaced module function (e.g. in a test) is the one used
TRAINERS.update(shapesnet=lambda n: train_shapesnet(n), shapesvit=lambda n: train_shapesvit(n),
                resnet18=lambda n: train_resnet18(n))
