"""Train the RU decoder of one layer: ``python train.py task=decoder [model=...] [layer=...] [weights=...]``.

Every conv layer at once: ``python train.py -m task=decoder layer=conv1,conv2,conv3,conv4``. The decoder
(`infoflow.discarding.LayerDecoder`, MSE in the [0, 1] pixel space) is saved to
``decoder_path(task.decoder_dir, model, weights, layer, input_size)``, where ``analysis=layerwise`` looks.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from infoflow.builders import build_model
from infoflow.data.base import ImageDataModule
from infoflow.discarding import LayerDecoder, decoder_path
from infoflow.models.zoo import ZooModel
from infoflow.tasks import TASKS
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.cache import ensure_writable


@TASKS.register("decoder")
class DecoderTask(TrainingTask):
    """Fit the decoder of `cfg.task.layer` of `cfg.model` (with `cfg.weights`, frozen) on `cfg.data`; save it."""

    test = False

    def check(self) -> None:
        ensure_writable(self.cfg.task.decoder_dir, "task.decoder_dir (default: paths.cache_dir/decoders)")

    def build_module(self, dm: ImageDataModule) -> LayerDecoder:
        cfg = self.cfg
        self.model: ZooModel = build_model(cfg, dm)
        module = LayerDecoder.for_layer(self.model, str(cfg.task.layer), dm.mean, dm.std, width=cfg.task.width,
                                        num_blocks=cfg.task.num_blocks, lr=cfg.task.lr)
        module.strict_loading = False  # its checkpoints hold the decoder only; the frozen network is rebuilt
        return module

    def save(self, trainer: pl.Trainer, module: LayerDecoder, metrics: dict[str, Any]) -> None:
        model = self.model
        path = module.save(decoder_path(self.cfg.task.decoder_dir, model.name, model.weights, str(self.cfg.task.layer),
                                        model.input_size))
        print(f"decoder of {model.name}/{self.cfg.task.layer}: {path}  (val/mse {metrics.get('val/mse', float('nan')):.4f})")
