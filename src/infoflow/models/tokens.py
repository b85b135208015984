"""The token-layer adapter: a transformer layer's output seen as a (N, C, h, w) map over the patch grid.

infoflow's methods (Per-Sample and Readout IBA, SID/RU, Grad-CAM, the metrics' hooks) all take a layer's
output as a feature map (N, C, h, w). A Vision Transformer's block outputs tokens (N, P + h*w, C): P
*prefix* tokens (the class token; register tokens where a model has them) followed by one token per patch.
The transformer wrappers in `infoflow.models.vit` therefore name, after the patch embedding and after every
block, a parameter-free `TokenMap` module whose OUTPUT is the patch tokens as a map (N, C, h, w); the
wrapper's forward re-attaches the prefix tokens of the same block output to the (possibly replaced) map
with `with_patch_tokens` before the next block. Consequences:

- Every hook, bottleneck, estimator and decoder sees exactly the CNN contract (N, C, h, w), decided here
  and nowhere else.
- The prefix tokens pass every such layer unchanged: a bottleneck noises only the patch tokens, and the
  class token keeps its clean value. It carries no spatial attribution: a heatmap only shows what flows
  through the patch tokens, information the class token already gathered at that layer is not removed.
- The prefix tokens are a connection around every cut, so a `SplitModel` of a ViT uses the forward-hook
  split (the tail reruns the network and substitutes the map): exact, and about as costly as the
  reference implementation's full forward passes. Swin has no prefix tokens and keeps the torch.fx split.

Swin's blocks work channels-last, (N, h, w, C); `ChannelsFirst` names their outputs as (N, C, h, w) maps
in the same way.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenMap(nn.Module):
    """Tokens (N, P + h*w, C) -> patch map (N, C, h, w), dropping the `num_prefix` leading tokens.

    The grid is (h, w) = `grid`, row-major as the patches were flattened.
    """

    def __init__(self, grid: tuple[int, int], num_prefix: int = 1) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_prefix = int(num_prefix)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.num_prefix :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid).contiguous()

    def extra_repr(self) -> str:
        return f"grid={self.grid}, num_prefix={self.num_prefix}"


def with_patch_tokens(tokens: torch.Tensor, patch_map: torch.Tensor, num_prefix: int = 1) -> torch.Tensor:
    """The prefix tokens of `tokens` (N, P + L, C) followed by `patch_map` (N, C, h, w) as L = h*w tokens."""
    return torch.cat([tokens[:, :num_prefix], patch_map.flatten(2).transpose(1, 2)], dim=1)


class ChannelsFirst(nn.Module):
    """Channels-last tokens (N, h, w, C) -> map (N, C, h, w); `channels_last` goes back."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.permute(0, 3, 1, 2).contiguous()


def channels_last(feature_map: torch.Tensor) -> torch.Tensor:
    """Map (N, C, h, w) -> channels-last tokens (N, h, w, C)."""
    return feature_map.permute(0, 2, 3, 1)


def attach_token_map(model: nn.Module, path: str, name: str, grid: tuple[int, int], num_prefix: int) -> str:
    """Give the token output of submodule `path` of `model` a `TokenMap` adapter, added to `model` as child
    `name`, and return `name`: a forward hook on `path` passes its tokens through the adapter and puts the
    adapter's (possibly replaced) map back behind the untouched prefix tokens. `model`'s parameters, state
    dict keys and forward pass are unchanged (the adapter is parameter-free; without other hooks it is the
    identity on the tokens)."""
    if hasattr(model, name):
        raise ValueError(f"{type(model).__name__} already has an attribute {name!r}")
    adapter = TokenMap(grid, num_prefix)
    model.add_module(name, adapter)

    def hook(_module: nn.Module, _inputs: object, tokens: torch.Tensor) -> torch.Tensor:
        return with_patch_tokens(tokens, adapter(tokens), num_prefix)

    model.get_submodule(path).register_forward_hook(hook)
    model.fx_split = False  # the prefix tokens cross every cut (module docstring)
    return name
