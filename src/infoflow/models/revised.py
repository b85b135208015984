"""Architecturally revised ("damaged") zoo models of the SID/RU paper's Fig. 4a.

One conv layer is replaced by 4 filters of 7x7 with padding 3 (same stride), which cuts the feature
dimension there; the batch norm right after it (if any) and the next conv layer's input channels follow.
Registered as ``<model>_revised`` with the same layer names as the original, so the layer-wise analyses
compare the two layer by layer.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from infoflow.models.layers import shapesnet_layers, vgg_layers
from infoflow.models.zoo import MODELS, ModelEntry

#: the paper's revision: filters, kernel size, padding
FILTERS, KERNEL, PADDING = 4, 7, 3


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def revise_conv(model: nn.Module, path: str) -> nn.Module:
    """Replace the first conv at or inside module `path` by 4 filters of 7x7 (padding 3); fix what follows it."""
    names = [n for n, _ in model.named_modules()]
    convs = [n for n in names if isinstance(model.get_submodule(n), nn.Conv2d)
             and (n == path or n.startswith(path + "."))]
    if not convs:
        raise ValueError(f"module {path!r} holds no Conv2d to revise")
    target = convs[0]
    old = model.get_submodule(target)
    _set(model, target, nn.Conv2d(old.in_channels, FILTERS, KERNEL, stride=old.stride, padding=PADDING,
                                  bias=old.bias is not None))
    for name in names[names.index(target) + 1:]:
        m = model.get_submodule(name)
        if isinstance(m, nn.BatchNorm2d):
            _set(model, name, nn.BatchNorm2d(FILTERS))
        elif isinstance(m, nn.Conv2d):
            _set(model, name, nn.Conv2d(FILTERS, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                                        bias=m.bias is not None))
            break
    return model


def _revised(base: str, layer: str, layers) -> ModelEntry:
    entry = MODELS.get(base)()

    def build(n: int) -> nn.Module:
        model = entry.build(n)
        return revise_conv(model, layers(model)[layer])

    return ModelEntry(build, layers, entry.input_size, entry.num_classes, None)


REVISED = {"shapesnet": "conv3", "vgg16": "conv4_3", "vgg19": "conv4_4"}


@MODELS.register("shapesnet_revised", base="shapesnet", layers=shapesnet_layers)
@MODELS.register("vgg16_revised", base="vgg16", layers=vgg_layers)
@MODELS.register("vgg19_revised", base="vgg19", layers=vgg_layers)
def revised_entry(base: str, layers: Callable[[nn.Module], dict[str, str]]) -> ModelEntry:
    """`base` with its layer `REVISED[base]` revised to 4 filters of 7x7 (padding 3)."""
    return _revised(base, REVISED[base], layers)
