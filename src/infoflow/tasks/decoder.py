"""Train the RU decoder of one layer: ``python train.py task=decoder [model=...] [layer=...] [weights=...]``.

Every conv layer at once: ``python train.py -m task=decoder layer=conv1,conv2,conv3,conv4``. The decoder
(`infoflow.discarding.LayerDecoder`, MSE in the [0, 1] pixel space) is saved to
``decoder_path(task.decoder_dir, model, weights, layer, input_size)``, where ``analysis=layerwise`` looks.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from infoflow.builders import build_datamodule, build_model, build_trainer, log_config
from infoflow.discarding import LayerDecoder, MissingDecoderError, decoder_path
from infoflow.tasks import TASKS
from infoflow.utils.cache import ensure_writable

#: the command that trains a missing decoder (format fields: model, layer, weights)
TRAIN_COMMAND = "python train.py task=decoder model={model} layer={layer} weights={weights}"
MissingDecoderError.hint = f"Train one with: {TRAIN_COMMAND}"


@TASKS.register("decoder")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit the decoder of `cfg.layer` of `cfg.model` (with `cfg.weights`, frozen) on `cfg.data`; save it."""
    ensure_writable(cfg.task.decoder_dir, "task.decoder_dir (default: paths.cache_dir/decoders)")  # before training
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    module = LayerDecoder.for_layer(
        model, cfg.layer, dm.mean, dm.std, width=cfg.task.width, num_blocks=cfg.task.num_blocks, lr=cfg.task.lr
    )
    trainer = build_trainer(cfg)
    log_config(trainer, cfg)
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        path = module.save(decoder_path(cfg.task.decoder_dir, model.name, model.weights, cfg.layer, model.input_size))
        print(f"decoder of {model.name}/{cfg.layer}: {path}  (val/mse {metrics.get('val/mse', float('nan')):.4f})")
    return metrics
