"""`wrap`: any `nn.Module` classifier as a `ZooModel`, with its layers named, so every infoflow method works on it.

    model = infoflow.models.wrap(my_net, input_size=(3, 224, 224), num_classes=10, layers={"block3": "stages.2"})

A layer is named by a module path of ``my_net.named_modules()``. Its output must be a feature map
(N, C, h, w) or a token sequence (N, P + h*w, C); a token layer gets a `TokenMap` adapter (named as the
layer) whose output is the patch map, and the `num_prefix_tokens` leading tokens (class, register,
distillation tokens) pass every bottleneck unchanged (`infoflow.models.tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from infoflow.errors import ConfigError
from infoflow.models.inplace import disable_inplace
from infoflow.models.tokens import attach_token_map
from infoflow.models.zoo import ZooModel
from infoflow.utils.hooks import capture_outputs
from infoflow.utils.validation import (
    check_count,
    check_feature,
    check_input_size,
    check_logits,
    check_module_path,
)


def wrap(
    module: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    num_classes: int | None = None,
    layers: Mapping[str, str] | Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str | None = None,
    num_prefix_tokens: int = 0,
    grid: tuple[int, int] | None = None,
    weights: str = "none",
) -> ZooModel:
    """`module` (images (N, C, H, W) -> logits (N, num_classes)) as a `ZooModel` in eval mode.

    Args:
        input_size: (C, H, W) of one input image.
        num_classes: the number of logits (checked on a probe batch of two zero images).
        layers: layer name -> module path, or a list of module paths (each its own name), in forward order.
        mean, std: the normalisation of the inputs (``(x - mean) / std`` with x in [0, 1]); SID needs them.
        name: the model's name in messages and cache keys (default: the class name).
        num_prefix_tokens: leading non-patch tokens of token layers (class, register, distillation tokens).
        grid: (h, w) patch grid of token layers (default: square, from the token count).
        weights: a label of the weights, for cache keys.
    """
    size = check_input_size(tuple(input_size) if isinstance(input_size, list) else input_size)
    if num_classes is None:
        raise ConfigError("num_classes must be given: the number of logits the model returns")
    num_classes = check_count(num_classes, "num_classes")
    name = name or type(module).__name__
    named = dict(layers) if isinstance(layers, Mapping) else {p: p for p in (layers or [])}
    for layer, path in named.items():
        check_module_path(module, path, f"layers[{layer!r}]")
    module.eval()
    disable_inplace(module)
    probe = torch.zeros(2, *size, dtype=next((p.dtype for p in module.parameters()), torch.float32))
    with torch.no_grad(), capture_outputs(module, list(dict.fromkeys(named.values()))) as out:
        try:
            logits = module(probe)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"model {name!r} fails on images of input_size={size}: {err}") from err
    check_logits(logits, 2, num_classes, name)
    resolved: dict[str, str] = {}
    for layer, path in named.items():
        kind = check_feature(out.get(path), f"{layer!r} ({path})")
        if kind == "tokens":
            resolved[layer] = attach_token_map(module, path, _adapter_name(module, layer),
                                               _grid(out[path], num_prefix_tokens, grid, layer), num_prefix_tokens)
        else:
            resolved[layer] = path
    return ZooModel(name, module, num_classes, size, weights, resolved,
                    tuple(map(float, mean)) if mean is not None else None,
                    tuple(map(float, std)) if std is not None else None)


def _adapter_name(module: nn.Module, layer: str) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in layer)
    return base if not hasattr(module, base) else f"{base}_map"


def _grid(tokens: torch.Tensor, prefix: int, grid: tuple[int, int] | None, layer: str) -> tuple[int, int]:
    patches = tokens.shape[1] - prefix
    if grid is not None:
        if grid[0] * grid[1] != patches:
            raise ConfigError(f"grid={tuple(grid)} does not fit layer {layer!r}: {patches} patch tokens "
                              f"({tokens.shape[1]} tokens minus num_prefix_tokens={prefix})")
        return (int(grid[0]), int(grid[1]))
    side = math.isqrt(max(patches, 0))
    if side * side != patches or patches == 0:
        raise ConfigError(f"layer {layer!r} has {tokens.shape[1]} tokens; minus num_prefix_tokens={prefix} that is "
                          f"{patches}, not a square patch grid: set num_prefix_tokens or grid=(h, w)")
    return (side, side)
