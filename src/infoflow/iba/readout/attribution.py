"""Readout Bottleneck heatmaps from a trained readout checkpoint: method ``readout``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from infoflow.errors import ConfigError
from infoflow.iba.bottleneck import capacity_to_heatmap
from infoflow.iba.per_sample import IBAResult
from infoflow.iba.readout.meta import check_meta, load_readout, setup_meta
from infoflow.iba.readout.network import ReadoutBottleneck
from infoflow.interface import METHODS, Attribution, check_inputs_and_target
from infoflow.models.zoo import ZooModel
from infoflow.utils.precision import resolve_precision


class ReadoutIBA(Attribution):
    """Readout Bottleneck heatmaps (bits per pixel) from a trained readout: one pass per image.

    Build it from a checkpoint with `ReadoutIBA.load`. The heatmap does not depend on the target.
    `precision` (``32`` | ``bf16`` | ``16-mixed``): the network passes (see `infoflow.iba.readout.network`).
    """

    unit = "bits/pixel"

    def __init__(self, readout: ReadoutBottleneck, batch_size: int = 64, precision: str | int = 32) -> None:
        super().__init__(readout.zoo)
        self.readout = readout.eval()
        self.batch_size = batch_size
        self.readout.precision = self.precision = resolve_precision(precision, self.device)

    @classmethod
    def load(
        cls,
        model: ZooModel,
        readout_ckpt: str | Path | None,
        layer: str | None = None,
        data: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        precision: str | int = 32,
    ) -> ReadoutIBA:
        """The readout of checkpoint `readout_ckpt` for `model`.

        Raises a `ConfigError` when the checkpoint was trained for another model, weights, `layer` or `data`
        (the data config; None skips that check).
        """
        if readout_ckpt is None:
            raise ConfigError("method=readout needs readout_ckpt=<path>: the readout.pt or checkpoints/last.ckpt of a"
                             " `python train.py task=readout` run")
        meta, state = load_readout(readout_ckpt)
        check_meta(meta, setup_meta(model, layer, data), str(readout_ckpt))
        readout = ReadoutBottleneck(model, meta["layer"], meta["readout_layers"], sigma=meta["sigma"],
                                    hidden=meta["hidden"], max_alpha=meta["max_alpha"])
        readout.load_state_dict(state)
        return cls(readout, batch_size, precision)

    @torch.no_grad()
    def explain(self, inputs: torch.Tensor, target: torch.Tensor | int) -> IBAResult:
        """Heatmaps, capacities and target probabilities with (one noise draw) and without the bottleneck."""
        target = check_inputs_and_target(self.model, inputs, target)
        if inputs.shape[0] == 0:
            return IBAResult.empty(tuple(inputs.shape[-2:]), self.readout.feature_shape, inputs.device)
        parts = []
        for i in range(0, inputs.shape[0], self.batch_size):
            x, t = inputs[i : i + self.batch_size], target[i : i + self.batch_size, None]
            out = self.readout(x)
            assert out.noisy_logits is not None
            parts.append((capacity_to_heatmap(out.capacity, tuple(x.shape[-2:])), out.capacity,
                          F.softmax(out.noisy_logits, 1).gather(1, t)[:, 0], F.softmax(out.logits, 1).gather(1, t)[:, 0]))
        return IBAResult(*(torch.cat(p) for p in zip(*parts, strict=True)))

    @torch.no_grad()
    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            capacity_to_heatmap(self.readout(x, noisy=False).capacity, tuple(x.shape[-2:]))
            for x in inputs.split(self.batch_size)
        ])


@METHODS.register("readout")
def _readout_iba(model: ZooModel, precision: str | int = 32, **kwargs: Any) -> ReadoutIBA:
    return ReadoutIBA.load(model, precision=precision, **kwargs)
