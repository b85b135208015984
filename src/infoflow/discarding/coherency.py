"""The coherency property: rescaling adjacent layers leaves the function, SID and RU unchanged.

Multiplying layer L's weights and bias by 1/k and layer L+1's weights by k leaves the network's
function unchanged whenever only positively homogeneous operations (ReLU, max/average pooling) lie
between them: ReLU(y / k) = ReLU(y) / k. Layer L's feature shrinks by k, so delta_f² shrinks by k² and
the SID constraint E||h(x') - f||² = alpha delta_f² (hence SID) does not change; layer L+1's feature is
unchanged. Plain gradient maps of layer L's feature shrink by k instead.

For a block layer (e.g. conv-BN-ReLU) the last affine module of L (conv/linear/BN: weight and bias) and
the first one of L+1 (its weight) are rescaled. `rescale_adjacent_layers` checks that the logits are
unchanged on given inputs, so a network where the property does not hold (a skip connection around
the layers, a BatchNorm between them) is an error rather than a silent false result.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from infoflow.discarding.features import LayerFeatures
from infoflow.discarding.sid import SIDConfig, layerwise_sid
from infoflow.models.zoo import ZooModel

_AFFINE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ConvTranspose2d)


def _affine(module: nn.Module, which: int) -> nn.Module:
    found = [m for m in module.modules() if isinstance(m, _AFFINE) and getattr(m, "weight", None) is not None]
    if not found:
        raise ValueError(f"{type(module).__name__} has no conv/linear/BatchNorm weight to rescale")
    return found[which]


def max_logit_change(model: nn.Module, other: nn.Module, inputs: torch.Tensor) -> float:
    """max |logits(other) - logits(model)| / max |logits(model)| on normalised `inputs` (eval mode)."""
    with torch.no_grad():
        a, b = model.eval()(inputs), other.eval()(inputs)
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


@torch.no_grad()
def rescale_adjacent_layers(
    model: nn.Module,
    layer: str,
    next_layer: str,
    factor: float = 4.0,
    check_inputs: torch.Tensor | None = None,
    rtol: float = 1e-4,
) -> nn.Module:
    """A deep copy of `model` with layer `layer`'s output scaled by 1/`factor` and `next_layer`'s weights by `factor`.

    Args:
        layer, next_layer: module paths of consecutive layers.
        check_inputs: normalised images; if given, the logits must change by at most `rtol` (relative
            to the largest logit), else ValueError.
    """
    out = copy.deepcopy(model)
    first = _affine(out.get_submodule(layer), -1)
    first.weight.mul_(1 / factor)
    if getattr(first, "bias", None) is not None:
        first.bias.mul_(1 / factor)
    _affine(out.get_submodule(next_layer), 0).weight.mul_(factor)
    if check_inputs is not None:
        change = max_logit_change(model, out, check_inputs)
        if change > rtol:
            raise ValueError(
                f"rescaling {layer} by 1/{factor} and {next_layer} by {factor} changes the logits by {change:.2e} "
                "(relative): something other than ReLU/pooling lies between the layers"
            )
    return out


def feature_gradient_map(
    model: nn.Module, layer: str, images01: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(N, H, W) plain gradient map |d sum(h_layer(x)) / dx|, summed over channels, x in [0, 1]."""
    features = LayerFeatures(model, [layer], mean, std)
    x = images01.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(features(x)[layer].sum(), [x])
    return grad.abs().sum(1)


def coherency_report(
    model: ZooModel,
    layer: str,
    images01: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    factor: float = 4.0,
    config: SIDConfig | None = None,
    delta_f2_samples: int = 16,
) -> dict[str, object]:
    """SID and gradient-map magnitudes at `layer` and the next conv layer, before and after rescaling.

    Returns a dict with ``layers``, ``logit_change`` (relative), ``sid_before``/``sid_after`` ((L,) mean SID
    per pixel, nats) and ``grad_before``/``grad_after`` ((L,) mean gradient-map magnitude).
    """
    convs = model.conv_layers()
    model.layer_path(layer)  # unknown layers: the zoo's error
    if layer not in convs[:-1]:
        raise ValueError(f"layer {layer!r} must be a conv layer followed by another; conv layers: {convs}")
    nxt = convs[convs.index(layer) + 1]
    inputs = (images01 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    module = rescale_adjacent_layers(
        model.module, model.layer_path(layer), model.layer_path(nxt), factor, check_inputs=inputs
    )
    rescaled = dataclasses.replace(model, module=module, weights=f"{model.weights}+rescaled{factor:g}")
    layers = [layer, nxt]
    report: dict[str, object] = {
        "layers": layers,
        "logit_change": max_logit_change(model.module, module, inputs),
    }
    for key, zoo in (("before", model), ("after", rescaled)):
        sid = layerwise_sid(
            zoo, images01, mean, std, layers, config or SIDConfig(), delta_f2_samples=delta_f2_samples
        )
        report[f"sid_{key}"] = sid.per_pixel.mean(0)
        report[f"grad_{key}"] = torch.stack(
            [feature_gradient_map(zoo.module, zoo.layer_path(n), images01, mean, std).mean() for n in layers]
        )
    return report
