"""The Readout Bottleneck (Schulz et al. 2020, section 3.3): a network that predicts the mask from readouts.

A first pass without noise collects *readouts*, the feature maps of several layers and the logits. Each is
standardised with its estimated per-element mean and std, resized bilinearly to the bottleneck's spatial
size (2-D outputs such as logits are broadcast over space) and concatenated. Three 1x1 convolutions with
ReLU between them predict alpha (clamped to [-max_alpha, max_alpha]); the smoothing, noise and capacity are
those of the Per-Sample Bottleneck (`Bottleneck`). A second pass runs only the part of the network after
the bottleneck, on the noisy features. The readout sees no target: its heatmap is class-agnostic.

The analysed classifier is frozen (no gradients, always in eval mode) and deliberately not a registered
submodule: `train()` cannot switch its batch norms to training mode, optimisers and DDP never see its
weights, and checkpoints hold only the readout (plus metadata naming the model, weights, layers and data
it was trained for; `check_meta` rejects a checkpoint made for something else).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from infoflow.iba.bottleneck import Bottleneck, capacity_to_heatmap
from infoflow.iba.estimator import Estimator, NotEstimatedError
from infoflow.iba.per_sample import IBAResult
from infoflow.interface import METHODS, Attribution, check_inputs_and_target
from infoflow.models.split import SplitModel
from infoflow.models.zoo import ZooModel
from infoflow.utils.cache import LOADER_KEYS, SELECTION_KEYS, data_signature, ensure_writable, load_cached
from infoflow.utils.cache import tensor_fingerprint as weights_fingerprint
from infoflow.utils.checkpoint import load_file

#: key of the metadata in readout checkpoints (Lightning ``.ckpt`` or the exported ``readout.pt``)
META_KEY = "readout_meta"
#: prefix of the readout's weights in a checkpoint's ``state_dict``
STATE_PREFIX = "readout."
#: data-config keys a trained readout does not depend on: loader settings and the choice of examples
_DATA_KEYS_IGNORED = LOADER_KEYS | SELECTION_KEYS


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


class ReadoutBottleneck(nn.Module):
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
            raise ValueError("readout_layers is empty: give at least one layer to read out")
        self.zoo = model
        self.layer_name, self.layer_path = layer, model.layer_path(layer)
        self.readout_names = list(readout_layers)
        self.readout_paths = [model.layer_path(name) for name in self.readout_names]
        if len(set(self.readout_paths)) != len(self.readout_paths):
            raise ValueError(f"readout_layers {self.readout_names} name the same layer twice")
        #: layers whose statistics are estimated: the readouts and the bottleneck layer, name -> module path
        self.stat_layers = dict(zip(self.readout_names, self.readout_paths, strict=True))
        if self.layer_path not in self.readout_paths:
            self.stat_layers[layer] = self.layer_path
        self.max_alpha = max_alpha
        module = model.module.eval().requires_grad_(False)
        # not registered (see the module docstring); `_apply` moves it along with the readout
        self.__dict__["split"] = SplitModel(module, self.layer_path)

        param = next(module.parameters())
        features, _ = self.features(torch.zeros(1, *model.input_size, device=param.device, dtype=param.dtype))
        self.shapes = {path: tuple(f.shape[1:]) for path, f in features.items()}
        for name, path in self.stat_layers.items():
            if len(self.shapes[path]) not in (1, 3):
                raise ValueError(f"layer {name!r} ({path}) outputs shape {self.shapes[path]}: readouts must be "
                                 "(C, H, W) feature maps or (D,) vectors")
        if len(self.shapes[self.layer_path]) != 3:
            raise ValueError(f"bottleneck layer {layer!r} outputs {self.shapes[self.layer_path]}, not a (C, H, W) map")
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
            raise ValueError(f"hidden must give the channels of the 2 hidden 1x1 convolutions, got {hidden}")
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

    def _apply(self, fn: Callable, recurse: bool = True) -> ReadoutBottleneck:  # type: ignore[override]
        self.split._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def readout_norm(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of readout i: its standardised value is ``f * scale + shift`` = (f - mean) / std."""
        return getattr(self, f"readout_scale_{i}"), getattr(self, f"readout_shift_{i}")

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One noise-free pass: ({module path: (N, *shape) output} for `stat_layers`, (N, K) logits).

        Outputs are copied, so in-place operations later in the network (VGG's ReLUs) do not change them.
        """
        out: dict[str, torch.Tensor] = {}
        hooks = [
            self.classifier.get_submodule(path).register_forward_hook(
                lambda _m, _i, o, path=path: out.setdefault(path, o.detach().clone())
            )
            for path in self.stat_layers.values()
        ]
        try:
            logits = self.classifier(x)
        finally:
            for hook in hooks:
                hook.remove()
        return out, logits

    def set_statistics(self, estimators: Mapping[str, Estimator]) -> None:
        """Copy the (synced) statistics of every layer in `stat_layers` (by name) into the buffers in place."""
        missing = sorted(set(self.stat_layers) - set(estimators))
        if missing:
            raise ValueError(f"no statistics for layers {missing}")
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
        alpha = self.net[1:](hidden).clamp(-self.max_alpha, self.max_alpha)
        return self.bottleneck.lam(alpha)

    def forward(self, x: torch.Tensor, noisy: bool = True, noise: torch.Tensor | None = None) -> ReadoutOutput:
        """Both passes for images `x` (N, C, H, W); with `noisy` False only the first (enough for heatmaps).

        `noise`: standard normal (N, C, h, w) for the bottleneck (drawn when None).
        """
        if not bool(self.fitted):
            raise NotEstimatedError("the readout's feature statistics are not set: call set_statistics first")
        features, logits = self.features(x)
        r = features[self.layer_path]
        lam = self.lam(features)
        capacity = self.bottleneck.capacity(r, lam)
        noisy_logits = None
        if noisy:
            z = self.bottleneck.inject(r, lam, noise)
            noisy_logits = self.split.tail(z, x if self.split.needs_input else None)
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


def setup_meta(model: ZooModel, layer: str | None = None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model (name, classes, input size, weights), bottleneck `layer` and data a readout is used with."""
    meta: dict[str, Any] = {
        "model": model.name,
        "weights": str(model.weights),
        "weights_fingerprint": weights_fingerprint(model.module),
        "num_classes": model.num_classes,
        "input_size": list(model.input_size),
        "data": data_signature(data, _DATA_KEYS_IGNORED),
    }
    if layer is not None:
        meta["layer"], meta["layer_path"] = layer, model.layer_path(layer)
    return meta


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing of (N, C, H, W) maps to `size` (a no-op at that size already)."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def check_meta(found: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    """Raise ValueError naming what differs when checkpoint metadata `found` is not for `expected`.

    Compares model, number of classes, input size, classifier weights, and where `expected` has them
    (see `setup_meta` and `ReadoutBottleneck.meta`) the bottleneck layer, readout layers and data.
    """
    problems = []
    for key, name, what in [("model", "model", "model"), ("num_classes", "num_classes", "number of classes"),
                            ("input_size", "input_size", "input size"), ("layer_path", "layer", "bottleneck layer"),
                            ("readout_paths", "readout_layers", "readout layers")]:
        if key in expected and _as_list(found[key]) != _as_list(expected[key]):
            problems.append(f"{what}: checkpoint {found[name]!r}, now {expected[name]!r}")
    if found["model"] == expected["model"]:
        if not isinstance(found["weights_fingerprint"], str):
            problems.append("classifier weights: the checkpoint records them in an older format; retrain it")
        elif found["weights_fingerprint"] != expected["weights_fingerprint"]:
            hint = " (random weights differ between processes: save them and pass weights=<file>)" * (
                found["weights"] == expected["weights"] == "none")
            problems.append(f"classifier weights: checkpoint trained with weights={found['weights']!r}, "
                            f"now weights={expected['weights']!r}, and they differ{hint}")
    if found.get("data") is not None and expected.get("data") is not None and found["data"] != expected["data"]:
        keys = sorted(set(found["data"]) | set(expected["data"]))
        diff = [f"data.{k}: checkpoint {found['data'].get(k)!r}, now {expected['data'].get(k)!r}"
                for k in keys if found["data"].get(k) != expected["data"].get(k)]
        problems.append("data (" + "; ".join(diff) + ")")
    if problems:
        raise ValueError(f"readout checkpoint {source} was trained for another setup: " + "; ".join(problems)
                         + ". Use a checkpoint trained for this model, layer and data (python train.py task=readout"
                         " model=... layer=... data=...), or change the overrides to match it.")


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


@torch.no_grad()
def fit_statistics(
    readout: ReadoutBottleneck,
    loader: DataLoader,
    max_samples: int = 5000,
    caches: Mapping[str, str | Path] | None = None,
    cached: Iterable[str] = (),
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Estimator]:
    """Estimate the statistics of every layer in `readout.stat_layers` (by name) in one pass over the data.

    The first `max_samples` images of `loader`'s dataset are used, in order; under DDP rank r takes images
    r, r + world_size, ..., and the estimators' float64 sums are summed over the ranks, so every rank ends
    with the statistics of one process that saw all of them. Layers named in `cached` are loaded from
    ``caches[name]`` instead; fitted ones are saved there by rank 0.
    """
    device = readout.bottleneck.mean.device
    estimators = {name: Estimator(readout.shapes[path]).to(device) for name, path in readout.stat_layers.items()}
    # a corrupt cache file is deleted and re-estimated (on every rank alike)
    loaded = {name for name in cached
              if caches is not None and load_cached(caches[name], estimators[name].load) is not None}
    todo = [name for name in estimators if name not in loaded]
    if not todo:
        return estimators
    if rank == 0 and caches is not None:
        for name in todo:
            ensure_writable(Path(caches[name]).parent)
    dataset = loader.dataset
    indices = range(rank, min(len(dataset), max_samples), world_size)  # type: ignore[arg-type]
    shard = DataLoader(Subset(dataset, indices), batch_size=loader.batch_size, num_workers=loader.num_workers,
                       collate_fn=loader.collate_fn)
    for batch in shard:
        features, _ = readout.features(batch["image"].to(device))
        for name in todo:
            estimators[name].update(features[readout.stat_layers[name]])
    for name in todo:
        with estimators[name].sync_context(should_sync=world_size > 1):
            if rank == 0 and caches is not None:
                estimators[name].save(caches[name])
            synced = {key: value.clone() for key, value in estimators[name].metric_state.items()}
        for key, value in synced.items():  # keep the summed states (the context restores the local ones)
            setattr(estimators[name], key, value)
    return estimators


def load_readout(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, readout state dict) of a readout checkpoint, read with ``weights_only=True``."""
    obj = load_file(path)
    if not isinstance(obj, dict) or META_KEY not in obj or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Readout Bottleneck checkpoint (train one with `python train.py task=readout`;"
                         " its run directory holds readout.pt and checkpoints/last.ckpt)")
    state = {k[len(STATE_PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(STATE_PREFIX)}
    return obj[META_KEY], state


class ReadoutIBA(Attribution):
    """Readout Bottleneck heatmaps (bits per pixel) from a trained readout: one pass per image.

    Build it from a checkpoint with `ReadoutIBA.load`. The heatmap does not depend on the target.
    """

    unit = "bits/pixel"

    def __init__(self, readout: ReadoutBottleneck, batch_size: int = 64) -> None:
        super().__init__(readout.zoo)
        self.readout = readout.eval()
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        model: ZooModel,
        readout_ckpt: str | Path | None,
        layer: str | None = None,
        data: Mapping[str, Any] | None = None,
        batch_size: int = 64,
    ) -> ReadoutIBA:
        """The readout of checkpoint `readout_ckpt` for `model`.

        Raises ValueError when the checkpoint was trained for another model, weights, `layer` or `data`
        (the data config; None skips that check).
        """
        if readout_ckpt is None:
            raise ValueError("method=readout needs readout_ckpt=<path>: the readout.pt or checkpoints/last.ckpt of a"
                             " `python train.py task=readout` run")
        meta, state = load_readout(readout_ckpt)
        check_meta(meta, setup_meta(model, layer, data), str(readout_ckpt))
        readout = ReadoutBottleneck(model, meta["layer"], meta["readout_layers"], sigma=meta["sigma"],
                                    hidden=meta["hidden"], max_alpha=meta["max_alpha"])
        readout.load_state_dict(state)
        return cls(readout, batch_size)

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
def _readout_iba(model: ZooModel, **kwargs: Any) -> ReadoutIBA:
    return ReadoutIBA.load(model, **kwargs)
