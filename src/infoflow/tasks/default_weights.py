"""Training of the built-in default model's weights (`infoflow.models.pretrained` calls it on first use)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from infoflow.data.shapes import ShapesDataModule
from infoflow.models.pretrained import SHAPESNET_RECIPE
from infoflow.models.shapesnet import ShapesNet
from infoflow.tasks.classifier import ClassifierModule
from infoflow.utils.determinism import make_deterministic


def train_shapesnet(num_classes: int, **overrides) -> dict[str, torch.Tensor]:
    """Train ShapesNet on the default ShapesDataModule with Lightning, seeded, with deterministic kernels, on
    the CPU with a fixed number of threads; return its state dict. Repeated runs give the same bits; other
    machines should too when their torch build and CPU instruction set (oneDNN/BLAS kernels) are the same."""
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
