"""Decoders g_l that reconstruct the input image from a layer's feature, for the RU metric.

`DecoderNet`: feature (C_f, H_f, W_f) -> image (C, H, W). A fixed per-channel standardisation of the
feature (BatchNorm without affine parameters, so decoders of layers with very different activation
scales train alike), a 1x1 conv to `width` channels, `num_blocks` residual blocks (conv-BN-ReLU-conv-BN
plus identity), then ceil(log2(H / H_f)) transposed-conv (4x4, stride 2) upsamplings halving the width
(at least 16), a 3x3 conv to C channels, and a bilinear resize when the size is not reached exactly.
Flat features (N, D) of linear layers are taken as (N, D, 1, 1).

Target: the input in the [0, 1] pixel space (the space of the SID noise), unbounded linear output,
loss MSE (mean over pixels and channels); Adam. `LayerDecoder` is the LightningModule that trains one
on the standard datamodule batches (``image`` normalised; it is mapped back with the datamodule's
mean/std before the frozen network computes the feature).

Storage: `decoder_path` names one file per `utils.cache.cache_key` of (model, weights, layer, input size)
under a root folder; the file holds the architecture hyper-parameters, the decoder's state dict and the
fingerprint of the network it was trained on (`utils.cache.tensor_fingerprint`), so a decoder is never
silently used with other weights. Lightning checkpoints of a `LayerDecoder` hold the same (the frozen
network is left out). `load_decoders` deletes a corrupt decoder file and reports it as missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from infoflow.discarding.features import LayerFeatures, model_fingerprint
from infoflow.errors import UserError
from infoflow.models.zoo import ZooModel
from infoflow.utils.cache import cache_file, cache_key, load_cached, save_cached
from infoflow.utils.checkpoint import load_file

#: the command that trains a missing decoder (format fields: model, layer, weights)
TRAIN_COMMAND = "python train.py task=decoder model={model} layer={layer} weights={weights}"


class MissingDecoderError(UserError, LookupError):
    """No trained decoder for a layer.

    The message names the model, the layer and the file looked for, followed by `hint`, a format string
    with ``{model}``, ``{layer}``, ``{weights}`` and ``{path}``: the command that trains one.
    """

    hint: ClassVar[str] = f"Train one with: {TRAIN_COMMAND}"

    def __init__(
        self, layer: str, model: str = "?", weights: str = "?", path: Path | str | None = None
    ) -> None:
        self.layer, self.model, self.weights, self.path = layer, model, weights, path
        where = f" (looked for {path})" if path is not None else ""
        hint = self.hint.format(model=model, layer=layer, weights=weights, path=path)
        super().__init__(f"no trained decoder for layer {layer!r} of model {model!r}{where}. {hint}")


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class DecoderNet(nn.Module):
    """Feature (N, C_f, H_f, W_f) or (N, D) -> reconstructed image (N, C, H, W) in [0, 1] units."""

    def __init__(
        self,
        feature_shape: Sequence[int],
        image_shape: Sequence[int],
        width: int = 64,
        num_blocks: int = 2,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in feature_shape)
        self.feature_shape = shape if len(shape) == 3 else (math.prod(shape), 1, 1)
        self.image_shape = tuple(int(s) for s in image_shape)
        c_f, h_f, w_f = self.feature_shape
        c, h, w = self.image_shape
        self.inp = nn.Sequential(nn.BatchNorm2d(c_f, affine=False), nn.Conv2d(c_f, width, 1))
        self.blocks = nn.Sequential(*[_ResBlock(width) for _ in range(num_blocks)])
        ups = max(0, math.ceil(math.log2(max(h / h_f, w / w_f))))
        layers: list[nn.Module] = []
        ch = width
        for _ in range(ups):
            out = max(16, ch // 2)
            layers += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, c, 3, padding=1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        y = self.out(self.up(self.blocks(self.inp(feature.reshape(-1, *self.feature_shape)))))
        if tuple(y.shape[-2:]) != self.image_shape[1:]:
            y = F.interpolate(y, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return y


class LayerDecoder(pl.LightningModule):
    """Trains a `DecoderNet` to reconstruct [0, 1] images from one layer's feature (MSE, Adam).

    Args:
        feature_shape, image_shape: (C_f, H_f, W_f) and (C, H, W).
        width, num_blocks: `DecoderNet` size.
        lr: Adam learning rate.
        encoder: the frozen network as a `LayerFeatures` (its mean/std undo the batches' normalisation);
            needed for training, not saved in checkpoints.
        layer: the name of the encoder layer whose feature is decoded.
    Logs ``train/mse`` and ``val/mse`` (mean squared error per pixel and channel, [0, 1] units).
    """

    def __init__(
        self,
        feature_shape: Sequence[int],
        image_shape: Sequence[int],
        width: int = 64,
        num_blocks: int = 2,
        lr: float = 1e-3,
        encoder: LayerFeatures | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        self.net = DecoderNet(feature_shape, image_shape, width, num_blocks)
        self.encoder = encoder
        if encoder is not None:
            if layer not in encoder.paths:
                raise ValueError(f"layer {layer!r} is not among the encoder's layers {list(encoder.paths)}")
            encoder.requires_grad_(False)

    @classmethod
    def for_layer(
        cls, model: ZooModel, layer: str, mean: Sequence[float], std: Sequence[float], **kwargs: Any
    ) -> LayerDecoder:
        """A decoder for `layer` (paper name or module path) of a zoo model; the feature shape is probed."""
        encoder = LayerFeatures(model.module, {layer: model.layer_path(layer)}, mean, std)
        with torch.no_grad():
            shape = encoder(torch.zeros(1, *model.input_size))[layer].shape[1:]
        return cls(tuple(shape), model.input_size, encoder=encoder, layer=layer, **kwargs)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.net(feature)

    def _mse(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.encoder is None:
            raise RuntimeError("LayerDecoder needs an encoder to train (use LayerDecoder.for_layer)")
        x01 = self.encoder.denormalize(batch["image"])
        with torch.no_grad():
            feature = self.encoder(x01)[self.hparams.layer]
        return F.mse_loss(self.net(feature), x01)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._mse(batch)
        self.log("train/mse", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/mse", self._mse(batch), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        if self.encoder is not None:
            checkpoint["encoder_fingerprint"] = model_fingerprint(self.encoder.model)

    def save(self, path: str | Path) -> Path:
        """Write the decoder (architecture, weights, the encoder's fingerprint) atomically to `path`, as an
        infoflow cache file (`utils.cache.save_cached`)."""
        hp = {k: self.hparams[k] for k in ("feature_shape", "image_shape", "width", "num_blocks")}
        fingerprint = model_fingerprint(self.encoder.model) if self.encoder is not None else None
        record = {
            "hparams": _plain(hp),
            "state_dict": self.net.state_dict(),
            "encoder_fingerprint": fingerprint,
        }
        return save_cached(record, path)


def _plain(obj: Any) -> Any:
    """Tuples/lists/dicts of numbers as plain lists/dicts (loadable with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def decoder_path(
    root: str | Path, model_name: str, weights: str, layer: str, input_size: Sequence[int]
) -> Path:
    """The file of the decoder of `layer` of (model, weights) at `input_size` under `root`."""
    key = cache_key(model_name, weights, layer, None, {"kind": "decoder", "input_size": [int(s) for s in input_size]})
    return cache_file(root, model_name, layer, key)


def _read_decoder(path: str | Path) -> tuple[DecoderNet, str | None]:
    """(decoder in eval mode, fingerprint of the network it was trained on or None) from a decoder file;
    ValueError for anything else (not a decoder, missing hyper-parameters, weights that do not fit)."""
    obj = load_file(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"{path} is not a decoder file")
    hp = obj.get("hparams") or obj.get("hyper_parameters")
    keys = ("feature_shape", "image_shape", "width", "num_blocks")
    if not isinstance(hp, dict) or any(k not in hp for k in keys):
        raise ValueError(f"{path} is not a decoder file (needs hyper-parameters {', '.join(keys)})")
    state = {k.removeprefix("net."): v for k, v in obj["state_dict"].items()}
    net = DecoderNet(hp["feature_shape"], hp["image_shape"], hp["width"], hp["num_blocks"])
    net.load_state_dict(state)
    return net.eval(), obj.get("encoder_fingerprint")


def _check_fingerprint(path: str | Path, trained_on: str | None, fingerprint: str | None) -> None:
    if fingerprint is not None and trained_on is not None and trained_on != fingerprint:
        raise ValueError(f"decoder {path} was trained on other weights of the network; retrain it")


def load_decoder(path: str | Path, fingerprint: str | None = None) -> DecoderNet:
    """A `DecoderNet` in eval mode from a `LayerDecoder.save` file or a Lightning checkpoint.

    Args:
        fingerprint: the network's `model_fingerprint`; a decoder trained on other weights is an error.
    """
    net, trained_on = _read_decoder(path)
    _check_fingerprint(path, trained_on, fingerprint)
    return net


def load_decoders(root: str | Path, model: ZooModel, layers: Sequence[str]) -> dict[str, DecoderNet]:
    """The decoders of `layers` of a zoo model from `root`; a missing (or corrupt, then deleted) one raises
    `MissingDecoderError`."""
    fingerprint = model_fingerprint(model.module)
    out = {}
    for layer in layers:
        model.layer_path(layer)  # unknown layers: the zoo's error
        path = decoder_path(root, model.name, model.weights, layer, model.input_size)
        found = load_cached(path, _read_decoder)
        if found is None:
            raise MissingDecoderError(layer, model.name, model.weights, path)
        _check_fingerprint(path, found[1], fingerprint)
        out[layer] = found[0]
    return out
