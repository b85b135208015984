"""The readout network and the bottleneck at one layer of a frozen classifier: `ReadoutBottleneck`.

The classifier is kept out of the module tree (`hide_module`), so `train()`, optimisers, DDP and
checkpoints see only the readout.

Precision: `precision` (set by `ReadoutIBA`; Lightning's ``bf16-mixed`` autocasts training steps itself)
runs the classifier's passes and the readout's 1x1 convolutions under autocast. Their outputs (features,
logits, alpha) are cast to fp32 at once, and lam, the capacity (nats) and the noise injection are computed
with autocast off (`full_precision`), so the bottleneck's quantities are fp32 in every setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from infoflow.errors import ConfigError, InputError
from infoflow.iba.bottleneck import Bottleneck
from infoflow.iba.estimator import Estimator, NotEstimatedError
from infoflow.iba.readout.meta import setup_meta
from infoflow.models.split import SplitModel
from infoflow.models.zoo import ZooModel
from infoflow.utils.hooks import capture_outputs, keep_copy
from infoflow.utils.modules import MovesHidden, hide_module
from infoflow.utils.precision import autocast, full_precision, to_fp32


@dataclass
class ReadoutOutput:
    """One pass of the Readout Bottleneck over a batch of N images.

    Attributes:
        logits: (N, K) logits of the unchanged classifier.
        lam: (N, C, h, w) fraction of the signal let through.
        capacity: (N, C, h, w) information per feature element, nats.
        noisy_logits: (N, K) logits with the bottleneck (None when the noisy pass was skipped).
    """

    logits: torch.Tensor
    lam: torch.Tensor
    capacity: torch.Tensor
    noisy_logits: torch.Tensor | None

    @property
    def info(self) -> torch.Tensor:
        """(N,) L_I / k: mean capacity per feature element (k = C*h*w), nats."""
        return self.capacity.flatten(1).mean(1)


class ReadoutBottleneck(MovesHidden, nn.Module):
    """Readout network + bottleneck at `layer` of a frozen zoo model.

    Args:
        model: the zoo model; its module is frozen (requires_grad False, eval mode) for good.
        layer: bottleneck layer (paper name or module path).
        readout_layers: layers read out in the first pass (e.g. ``[conv3_1, conv4_1, conv5_1, conv5_3, fc8]``).
        sigma: Gaussian smoothing of lam in feature pixels.
        hidden: channels of the two hidden 1x1 convolutions (default: both the bottleneck layer's channels C,
            so the readout network costs (readout channels + 2C) * C multiply-adds per feature pixel).
        init_bias: bias of the last convolution at the start; alpha = 5 gives lam ~ 0.993.
        init_std: std of the last convolution's initial weights (small, so lam starts near 1 everywhere).
        max_alpha: alpha is clamped to [-max_alpha, max_alpha].
    """

    def __init__(
        self,
        model: ZooModel,
        layer: str,
        readout_layers: Sequence[str],
        sigma: float = 1.0,
        hidden: Sequence[int] | None = None,
        init_bias: float = 5.0,
        init_std: float = 1e-3,
        max_alpha: float = 5.0,
    ) -> None:
        super().__init__()
        if not readout_layers:
            raise ConfigError("readout_layers is empty: give at least one layer to read out")
        self.zoo = model
        self.layer_name, self.layer_path = layer, model.layer_path(layer)
        self.readout_names = list(readout_layers)
        self.readout_paths = [model.layer_path(name) for name in self.readout_names]
        if len(set(self.readout_paths)) != len(self.readout_paths):
            raise ConfigError(f"readout_layers {self.readout_names} name the same layer twice")
        #: layers whose statistics are estimated: the readouts and the bottleneck layer, name -> module path
        self.stat_layers = dict(zip(self.readout_names, self.readout_paths, strict=True))
        if self.layer_path not in self.readout_paths:
            self.stat_layers[layer] = self.layer_path
        self.max_alpha = max_alpha
        #: resolved precision of the network passes outside Lightning (`infoflow.utils.precision`)
        self.precision = "32"
        module = model.module.eval().requires_grad_(False)
        # not registered (see the module docstring); `MovesHidden` moves it along with the readout
        hide_module(self, "split", SplitModel(module, self.layer_path))

        param = next(module.parameters())
        features, _ = self.features(torch.zeros(1, *model.input_size, device=param.device, dtype=param.dtype))
        self.shapes = {path: tuple(f.shape[1:]) for path, f in features.items()}
        for name, path in self.stat_layers.items():
            if len(self.shapes[path]) not in (1, 3):
                raise ConfigError(f"layer {name!r} ({path}) outputs shape {self.shapes[path]}: readouts must be "
                                 "(C, H, W) feature maps or (D,) vectors")
        if len(self.shapes[self.layer_path]) != 3:
            raise ConfigError(f"bottleneck layer {layer!r} outputs {self.shapes[self.layer_path]}, not a (C, H, W) map")
        self.feature_shape: tuple[int, int, int] = self.shapes[self.layer_path]  # type: ignore[assignment]
        shape = self.feature_shape
        self.bottleneck = Bottleneck(torch.zeros(shape), torch.ones(shape), torch.ones(shape, dtype=torch.bool), sigma)
        for i, path in enumerate(self.readout_paths):  # standardisation as f * scale + shift
            self.register_buffer(f"readout_scale_{i}", torch.ones(self.shapes[path]))
            self.register_buffer(f"readout_shift_{i}", torch.zeros(self.shapes[path]))
        self.register_buffer("fitted", torch.tensor(False))

        self.readout_channels = [self.shapes[p][0] for p in self.readout_paths]
        channels = sum(self.readout_channels)
        hidden = list(hidden) if hidden else [shape[0], shape[0]]
        if len(hidden) != 2:
            raise ConfigError(f"hidden must give the channels of the 2 hidden 1x1 convolutions, got {hidden}")
        self.hidden = hidden
        widths = [channels, *hidden]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 1), nn.ReLU()]
        last = nn.Conv2d(widths[-1], shape[0], 1)
        nn.init.normal_(last.weight, std=init_std)
        nn.init.constant_(last.bias, init_bias)
        self.net = nn.Sequential(*layers, last)
        self.to(param.device)

    @property
    def classifier(self) -> nn.Module:
        return self.split.model

    def readout_norm(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of readout i: its standardised value is ``f * scale + shift`` = (f - mean) / std."""
        return getattr(self, f"readout_scale_{i}"), getattr(self, f"readout_shift_{i}")

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One noise-free pass: ({module path: (N, *shape) output} for `stat_layers`, (N, K) logits).

        Outputs are copied, so nothing later in the network can change them; they are fp32 at any precision.
        """
        with capture_outputs(self.classifier, list(self.stat_layers.values()), take=keep_copy) as out, \
                autocast(self.precision, x.device):
            logits = self.classifier(x)
        return {path: to_fp32(f) for path, f in out.items()}, to_fp32(logits)

    def set_statistics(self, estimators: Mapping[str, Estimator]) -> None:
        """Copy the (synced) statistics of every layer in `stat_layers` (by name) into the buffers in place."""
        missing = sorted(set(self.stat_layers) - set(estimators))
        if missing:
            raise InputError(f"no statistics for layers {missing}: give an estimator for each of {sorted(self.stat_layers)}")
        with torch.no_grad():
            for i, name in enumerate(self.readout_names):
                scale, shift = self.readout_norm(i)
                scale.copy_(1 / estimators[name].std)
                shift.copy_(-estimators[name].mean * scale)
            estimator = estimators[self.bottleneck_stat_name]
            self.bottleneck.mean.copy_(estimator.mean)
            self.bottleneck.std.copy_(estimator.std)
            self.bottleneck.active.copy_(estimator.active.float())
            self.fitted.fill_(True)

    @property
    def bottleneck_stat_name(self) -> str:
        """Name in `stat_layers` of the bottleneck layer."""
        return next(name for name, path in self.stat_layers.items() if path == self.layer_path)

    def lam(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(N, C, h, w) lam predicted from the readouts in `features` (as returned by `features`).

        Equal to the network on the concatenation of the standardised readouts resized to (h, w), computed
        faster: resizing and a 1x1 convolution are both linear, so they commute, and the first convolution
        runs on each readout's slice of its weights at the smaller of the readout's and the bottleneck's
        resolution (on vectors such as logits it is a matrix product, broadcast over space).
        """
        with autocast(self.precision, first_device(features)):
            alpha = to_fp32(self._alpha(features))
        with full_precision(alpha.device):
            return self.bottleneck.lam(alpha.clamp(-self.max_alpha, self.max_alpha))

    def _alpha(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(N, C, h, w) alpha before clamping (see `lam`)."""
        size = self.feature_shape[1:]
        first = self.net[0]
        hidden = first.bias[None, :, None, None]
        for i, (weight, path) in enumerate(zip(first.weight.split(self.readout_channels, 1), self.readout_paths,
                                               strict=True)):
            scale, shift = self.readout_norm(i)
            f = torch.addcmul(shift, features[path], scale)
            if f.dim() == 2:
                hidden = hidden + (f @ weight[:, :, 0, 0].T)[:, :, None, None]
            elif f.shape[-2] * f.shape[-1] > size[0] * size[1]:
                hidden = hidden + F.conv2d(_resize(f, size), weight)
            else:
                hidden = hidden + _resize(F.conv2d(f, weight), size)
        return self.net[1:](hidden)

    def forward(self, x: torch.Tensor, noisy: bool = True, noise: torch.Tensor | None = None) -> ReadoutOutput:
        """Both passes for images `x` (N, C, H, W); with `noisy` False only the first (enough for heatmaps).

        `noise`: standard normal (N, C, h, w) for the bottleneck (drawn when None).
        """
        if not bool(self.fitted):
            raise NotEstimatedError("the readout's feature statistics are not set: call set_statistics first")
        features, logits = self.features(x)
        r = features[self.layer_path]
        lam = self.lam(features)
        with full_precision(x.device):
            capacity = self.bottleneck.capacity(r, lam)
            z = self.bottleneck.inject(r, lam, noise) if noisy else None
        noisy_logits = None
        if z is not None:
            with autocast(self.precision, x.device):
                noisy_logits = to_fp32(self.split.tail(z, x if self.split.needs_input else None))
        return ReadoutOutput(logits, lam, capacity, noisy_logits)

    def meta(self, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint of this readout is valid for (see `check_meta`); `data` is the data config."""
        return {
            **setup_meta(self.zoo, self.layer_name, data),
            "readout_layers": self.readout_names,
            "readout_paths": self.readout_paths,
            "sigma": self.bottleneck.blur.sigma,
            "hidden": self.hidden,
            "max_alpha": self.max_alpha,
        }


def first_device(features: Mapping[str, torch.Tensor]) -> torch.device:
    """The device of the first tensor in `features`."""
    return next(iter(features.values())).device


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing of (N, C, H, W) maps to `size` (a no-op at that size already)."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
