"""The model zoo: models by name, their weights, and their layers by the papers' names.

Weights are one of
- ``"none"``: random initialisation;
- a torchvision weights enum name (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...), fetched the torchvision way;
- ``"default"`` for ``shapesnet``, ``shapesvit`` and ``resnet18`` (at 128x128): trained on the built-in ``shapes``
  data on first use and cached (`ModelEntry.default_weights`, see `infoflow.models.pretrained`);
- a path to a local checkpoint (a ``state_dict``, or a Lightning checkpoint), loaded with ``weights_only=True``.

Every model is built with its in-place modules switched off (`infoflow.models.inplace`): same outputs, and
no module can overwrite a feature that a method keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn

from infoflow.errors import ConfigError
from infoflow.models.entry import MODELS, ModelEntry
from infoflow.models.inplace import disable_inplace
from infoflow.models.layers import convnext_layers, resnet_layers, swin_layers, vgg_layers, vit_layers
from infoflow.models.pretrained import default_state_dict
from infoflow.models.vit import TokenSwin, TokenViT, shapesvit
from infoflow.utils.checkpoint import CheckpointError, load_state_dict_file
from infoflow.utils.validation import check_class_indices, check_images


def _torchvision(name: str, layers: Callable[[nn.Module], dict[str, str]]) -> ModelEntry:
    return ModelEntry(
        build=lambda n: torchvision.models.get_model(name, weights=None, num_classes=n),
        layers=layers,
        input_size=(3, 224, 224),
        num_classes=1000,
        torchvision_name=name,
    )


@MODELS.register("vgg16", arch="vgg16")
@MODELS.register("vgg19", arch="vgg19")
@MODELS.register("alexnet", arch="alexnet")
def torchvision_vgg(arch: str) -> ModelEntry:
    """torchvision's VGG / AlexNet `arch` (ImageNet, 224x224), layers named ``conv4_1``, ``fc7``, ..."""
    return _torchvision(arch, vgg_layers)


@MODELS.register("resnet18", arch="resnet18")
@MODELS.register("resnet34", arch="resnet34")
@MODELS.register("resnet50", arch="resnet50")
def torchvision_resnet(arch: str) -> ModelEntry:
    """torchvision's ResNet `arch` (ImageNet, 224x224), layers named ``conv3_4``, ``fc``, ...; resnet18 has
    ``weights=default``: trained on 128x128 shapes images (`infoflow.models.pretrained`)."""
    entry = _torchvision(arch, resnet_layers)
    return replace(entry, default_weights=partial(default_state_dict, arch)) if arch == "resnet18" else entry


@MODELS.register("vit_b_16", arch="vit_b_16")
@MODELS.register("vit_b_32", arch="vit_b_32")
def torchvision_vit(arch: str) -> ModelEntry:
    """torchvision's ViT `arch` (224x224), its token layers as patch maps (`infoflow.models.tokens`):
    ``embed``, ``block1`` ... ``block12``, ``fc``."""
    entry = _torchvision(arch, vit_layers)
    return replace(entry, build=lambda n: TokenViT(entry.build(n)))


@MODELS.register("swin_t", arch="swin_t")
def torchvision_swin(arch: str) -> ModelEntry:
    """torchvision's Swin `arch` (224x224), stages as patch maps: ``embed``, ``stageS_B``, ``stageS``, ``fc``."""
    entry = _torchvision(arch, swin_layers)
    return replace(entry, build=lambda n: TokenSwin(entry.build(n)))


@MODELS.register("convnext_tiny", arch="convnext_tiny")
def torchvision_convnext(arch: str) -> ModelEntry:
    """torchvision's ConvNeXt `arch` (224x224): ``stem``, ``stageS_B``, ``stageS``, ``fc``."""
    return _torchvision(arch, convnext_layers)


@MODELS.register("shapesvit")
def shapesvit_entry() -> ModelEntry:
    """The small ViT for the built-in data (64x64, patch 8): ``embed``, ``block1`` ... ``block6``, ``fc``."""
    return ModelEntry(shapesvit, vit_layers, (3, 64, 64), 4, default_weights=partial(default_state_dict, "shapesvit"))


@dataclass
class ZooModel:
    """A zoo model in eval mode together with what the methods need to know about it.

    Attributes:
        module: the network, mapping images (N, C, H, W) to logits (N, num_classes).
        layers: the papers' layer names -> module paths, in forward order.
        input_size: expected (C, H, W) of one input image.
    """

    name: str
    module: nn.Module
    num_classes: int
    input_size: tuple[int, int, int]
    weights: str = "none"
    layers: dict[str, str] = field(default_factory=dict)
    #: per-channel normalisation of the inputs (images ``(x - mean) / std``, x in [0, 1]); None: unknown
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def layer_path(self, layer: str) -> str:
        """Resolve a paper layer name (``conv4_1``) or a module path (``features.17``) to a module path."""
        if layer in self.layers:
            return self.layers[layer]
        if layer and layer in dict(self.module.named_modules()):
            return layer
        raise ValueError(
            f"unknown layer {layer!r} for model {self.name!r}; valid layers: {', '.join(self.layers)}"
            " (a module path such as one of model.named_modules() is accepted too)"
        )

    def parameter_path(self, layer: str) -> str:
        """Module path of the parameters that compute `layer`: the layer's own path, except for a transformer's
        parameter-free token-map adapters (``block3`` -> its encoder block; see `TokenViT.parameter_paths`)."""
        path = self.layer_path(layer)
        return getattr(self.module, "parameter_paths", {}).get(path, path)

    def layer_module(self, layer: str) -> nn.Module:
        return self.module.get_submodule(self.layer_path(layer))

    def conv_layers(self) -> list[str]:
        """The names of all layers with spatial maps (conv layers/blocks; transformer embeddings, blocks and
        stages), in forward order, one name per module."""
        spatial = [n for n in self.layers if n.startswith(("conv", "embed", "block", "stem", "stage"))]
        first: dict[str, str] = {}
        for name in spatial:
            first.setdefault(self.layers[name], name)
        return list(first.values())

    def check_inputs(self, inputs: torch.Tensor) -> None:
        """Raise an `InputError` unless `inputs` is a finite batch (N, C, H, W) of the expected image size and of
        the network's dtype (float32 unless converted); see `infoflow.utils.validation`. N may be 0."""
        dtype = next((p.dtype for p in self.module.parameters() if p.is_floating_point()), None)
        check_images(inputs, self.input_size, dtype, self.name)

    def check_target(self, target: torch.Tensor) -> None:
        """Raise an `InputError` unless `target` holds integer class indices of this model."""
        check_class_indices(target, self.num_classes, self.name)


def list_models() -> list[str]:
    return MODELS.names()


def get_model(
    name: str,
    weights: str | Path | None = "none",
    num_classes: int | None = None,
    input_size: tuple[int, int, int] | list[int] | None = None,
) -> ZooModel:
    """Build zoo model `name` with `weights` (see module docstring), in eval mode, no module in place."""
    entry = MODELS.get(name)()
    num_classes = int(num_classes or entry.num_classes)
    weights = "none" if weights is None else str(weights)
    size = tuple(int(s) for s in (input_size or entry.input_size))
    if entry.load is not None:  # the model's own loader (timm: its pretrained path)
        module = entry.load(weights, num_classes, size)
        module.eval()
        disable_inplace(module)
        return ZooModel(name, module, num_classes, size, weights, entry.layers(module),  # type: ignore[arg-type]
                        entry.mean, entry.std)
    module = entry.build(num_classes)
    if weights.lower() == "none":
        pass
    elif weights == "default" and entry.default_weights is not None:
        module.load_state_dict(entry.default_weights(num_classes))
    elif Path(weights).expanduser().exists() or "/" in weights or weights.endswith((".pt", ".pth", ".ckpt")):
        load_into(module, load_state_dict_file(Path(weights).expanduser()), source=weights)
    elif entry.torchvision_name is not None:
        module.load_state_dict(_torchvision_state_dict(entry.torchvision_name, weights, num_classes))
    else:
        raise ConfigError(
            f"weights={weights!r}: unknown weights for model {name!r}; valid: 'none', a checkpoint path"
            + (", or 'default'" if entry.default_weights is not None else "")
        )
    module.eval()
    disable_inplace(module)
    return ZooModel(name, module, num_classes, size, weights, entry.layers(module),  # type: ignore[arg-type]
                    entry.mean, entry.std)


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, stripping a Lightning ``model.``/``module.`` prefix, with a clear error."""
    own = module.state_dict()
    for prefix in ("model.", "module.", "net."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(module).__name__}: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"shape mismatches {shapes[:5]}"
        )
    module.load_state_dict(state)


def _torchvision_state_dict(tv_name: str, spec: str, num_classes: int) -> dict[str, torch.Tensor]:
    enum = torchvision.models.get_model_weights(tv_name)
    try:
        weights = enum[spec.upper()] if spec.upper() != "DEFAULT" else enum.DEFAULT
    except KeyError:
        valid = ", ".join(["none", "DEFAULT", *enum.__members__])
        raise ValueError(f"unknown weights {spec!r} for {tv_name}; valid: {valid}, or a checkpoint path") from None
    classes = len(weights.meta["categories"])
    if num_classes != classes:
        raise ValueError(f"{weights} has {classes} classes, but num_classes={num_classes}")
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # network errors come in many types (URLError, OSError, ...)
        filename = Path(weights.url).name
        raise RuntimeError(
            f"could not download {weights} from {weights.url} ({type(err).__name__}: {err}). "
            f"This machine may be offline: fetch the file elsewhere and pass it as weights=/path/to/{filename}, "
            f"or put it in {Path(torch.hub.get_dir()) / 'checkpoints' / filename}"
        ) from err
