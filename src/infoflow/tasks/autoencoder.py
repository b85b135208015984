"""An auto-encoder on a zoo classifier's encoder: ``python train.py task=autoencoder model=resnet20``.

As in the SID/RU paper (Fig. 3, footnote 2): the encoder is the network up to ``task.layer`` (default: its
last conv layer/block, i.e. everything before the FC layer), the decoder is the RU decoder
(`infoflow.discarding.DecoderNet`), and both are trained together, from scratch, to reconstruct the [0, 1]
image (MSE). ``model.pt`` holds the whole zoo network's state dict (the encoder trained, the layers after
``task.layer`` as initialised), so ``weights=<run dir>/model.pt`` loads it as the zoo model and the
layer-wise analyses measure the encoder's layers; ``decoder.pt`` holds the decoder. Logs ``{train,val}/mse``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from infoflow.builders import build_model
from infoflow.data.base import ImageDataModule
from infoflow.discarding import DecoderNet
from infoflow.models.zoo import ZooModel
from infoflow.tasks import TASKS
from infoflow.tasks.common import StagedSteps, save_weights
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.checkpoint import atomic_save


class AutoEncoder(StagedSteps, pl.LightningModule):
    """The zoo network's feature at `layer` (N, C_f, H_f, W_f), decoded to the image (N, C, H, W), MSE, Adam."""

    def __init__(self, model: ZooModel, layer: str, mean, std, width: int = 64, num_blocks: int = 2,
                 lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "mean", "std"])
        self.encoder = model.module
        self.layer_module = model.layer_module(layer)
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))
        with torch.no_grad():
            shape = self.encode(torch.zeros(1, *model.input_size)).shape[1:]
        self.decoder = DecoderNet(tuple(shape), model.input_size, width, num_blocks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The feature at the layer of normalised images `x` (the rest of the network is not run)."""
        captured: list[torch.Tensor] = []

        class _Done(Exception):
            pass

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            captured.append(out)
            raise _Done

        handle = self.layer_module.register_forward_hook(hook)
        try:
            self.encoder(x)
        except _Done:
            pass
        finally:
            handle.remove()
        return captured[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))

    def on_fit_start(self) -> None:
        self.encoder.train()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        x = batch["image"]
        loss = F.mse_loss(self(x), x * self.std + self.mean)
        self.log(f"{stage}/mse", loss, prog_bar=True, sync_dist=stage != "train")
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


@TASKS.register("autoencoder")
class AutoEncoderTask(TrainingTask):
    """Train `cfg.model`'s encoder up to `cfg.task.layer` with an RU decoder to reconstruct images."""

    def build_module(self, dm: ImageDataModule) -> AutoEncoder:
        cfg = self.cfg
        self.model = build_model(cfg, dm, weights="none" if cfg.weights == "default" else None)
        layer = cfg.task.layer or self.model.conv_layers()[-1]
        return AutoEncoder(self.model, layer, dm.mean, dm.std, width=cfg.task.width,
                           num_blocks=cfg.task.num_blocks, lr=cfg.task.lr)

    def save(self, trainer: pl.Trainer, module: AutoEncoder, metrics: dict[str, Any]) -> None:
        print(f"auto-encoder on {self.model.name}: test/mse {metrics.get('test/mse', float('nan')):.4f}")
        atomic_save(module.decoder.state_dict(), f"{self.cfg.paths.output_dir}/decoder.pt")
        save_weights(module.encoder, self.cfg.paths.output_dir)
