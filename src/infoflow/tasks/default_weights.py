"""Training of the built-in default model's weights (`infoflow.models.pretrained` calls it on first use)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from infoflow.data.shapes import ShapesDataModule
from infoflow.models.pretrained import SHAPESNET_RECIPE
from infoflow.models.shapesnet import ShapesNet
from infoflow.tasks.classifier import ClassifierModule


def train_shapesnet(num_classes: int, **overrides) -> dict[str, torch.Tensor]:
    """Train ShapesNet on the default ShapesDataModule with Lightning; return its state dict."""
    recipe = {**SHAPESNET_RECIPE, **overrides}
    pl.seed_everything(recipe["seed"], workers=True, verbose=False)
    data = ShapesDataModule(num_classes=num_classes, batch_size=recipe["batch_size"], seed=recipe["seed"])
    module = ClassifierModule(ShapesNet(num_classes), num_classes, lr=recipe["lr"])
    trainer = pl.Trainer(
        max_epochs=recipe["epochs"], accelerator="auto", devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, deterministic=True,
    )
    trainer.fit(module, datamodule=data)
    acc = trainer.test(module, datamodule=data, verbose=False)[0]["test/acc"]
    print(f"[infoflow] default shapesnet: test accuracy {acc:.3f}")
    return {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
