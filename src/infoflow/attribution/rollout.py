"""Attention rollout (Abnar & Zuidema 2020): how much each patch token flows into the class token.

Per encoder block l, the attention weights are averaged over heads, the residual connection is added as
the identity, ``A_l = (mean_heads(attn_l) + I) / 2``, and the rows are renormalised to sum to one. The
rollout is the product ``A_L ... A_1`` (T x T, T = tokens); its class-token row over the patch tokens,
reshaped to the patch grid and upsampled bilinearly to the input size, is the map. It is class-agnostic:
the target is ignored. Only for ViTs (`infoflow.models.vit.TokenViT`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infoflow.attribution.baselines import FrozenAttribution
from infoflow.interface import METHODS
from infoflow.models.vit import TokenViT
from infoflow.models.zoo import ZooModel


def attention_weights(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Head-averaged self-attention weights (N, T, T) of `attention` on its input tokens `x` (N, T, C)."""
    return attention(x, x, x, need_weights=True, average_attn_weights=True)[1]


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """The attention rollout (N, T, T) of per-block head-averaged attentions (N, T, T), first block first."""
    eye = torch.eye(attentions[0].shape[-1], device=attentions[0].device, dtype=attentions[0].dtype)
    joint = eye.expand_as(attentions[0])
    for attn in attentions:
        a = (attn + eye) / 2
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint


@METHODS.register("attention-rollout")
class AttentionRollout(FrozenAttribution):
    """Attention rollout on a ViT: (N, H, W) maps, the class token's share of each patch (a.u., sums to
    at most one over the patch grid before upsampling)."""

    def __init__(self, model: ZooModel) -> None:
        super().__init__(model)
        self.vit = model.module

    @classmethod
    def unsupported(cls, model: ZooModel) -> str | None:
        if isinstance(model.module, TokenViT):
            return None
        return f"attention-rollout needs a ViT with a class token (vit_b_16, vit_b_32, shapesvit); {model.name!r} is not one"

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        blocks = list(self.vit.encoder.layers)
        seen: list[torch.Tensor] = []
        hooks = [b.self_attention.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for b in blocks]
        try:
            with torch.no_grad():
                self.vit(inputs)
        finally:
            for hook in hooks:
                hook.remove()
        with torch.no_grad():
            weights = [attention_weights(b.self_attention, x) for b, x in zip(blocks, seen, strict=True)]
        p = self.vit.num_prefix
        cls = rollout(weights)[:, 0, p:]  # (N, h*w)
        grid = cls.reshape(inputs.shape[0], 1, *self.vit.embed.grid)
        return F.interpolate(grid, size=inputs.shape[-2:], mode="bilinear")[:, 0]
