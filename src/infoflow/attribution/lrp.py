"""Layer-wise Relevance Propagation (Bach et al. 2015) with Zennit composites and canonizers.

One rule for every convolutional and dense layer (α=1,β=0 or ε=5, the paper's two variants), a box rule
(ZBox, Montavon et al. 2017) for the input layer by default, and Zennit's pass/normalise rules for
activations, sums and average pooling. Canonizers fold BatchNorm into the preceding conv and route ResNet
skip connections through a `Sum` module, so relevance is split between the two branches (torchvision
ResNets via Zennit's canonizers, the CIFAR ResNets via `CifarBasicBlockCanonizer`). Hooks and canonizers are
removed after every call, which restores the model's parameters exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer, SequentialMergeBatchNorm
from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
from zennit.core import Hook
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Flat, ZBox
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Linear as LinearLike

from infoflow.attribution.baselines import FrozenAttribution
from infoflow.interface import METHODS
from infoflow.models.cifar_resnet import BasicBlock
from infoflow.models.vit import transformer_reason
from infoflow.models.zoo import ZooModel
from infoflow.utils.validation import check_choice

Bound = float | Sequence[float] | None


class CifarBasicBlockCanonizer(AttributeCanonizer):
    """Route the residual addition of the CIFAR ResNets' `BasicBlock` through a Zennit `Sum` module (as
    Zennit's `ResNetBasicBlockCanonizer` does for torchvision's block)."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict[str, object] | None:
        if isinstance(module, BasicBlock):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.canonizer_sum(torch.stack([self.shortcut(x), out], dim=-1)))


def canonizers() -> list[Canonizer]:
    """Canonizers for every zoo model: BatchNorm folding (VGG, ShapesNet, ResNets) and ResNet skip sums."""
    return [
        SequentialMergeBatchNorm(),
        ResNetBottleneckCanonizer(),
        ResNetBasicBlockCanonizer(),
        CifarBasicBlockCanonizer(),
    ]


def _per_channel(bound: Bound, fallback: torch.Tensor) -> torch.Tensor:
    """A (1, C, 1, 1) tensor from a float or per-channel values, or `fallback` (N, C, 1, 1) when None."""
    if bound is None:
        return fallback
    return torch.as_tensor(bound, dtype=fallback.dtype, device=fallback.device).view(1, -1, 1, 1)


@METHODS.register("lrp-eps5", rule="epsilon", epsilon=5.0)
@METHODS.register("lrp-a1b0", rule="alpha-beta", alpha=1.0, beta=0.0)
class LRP(FrozenAttribution):
    """LRP with one `rule` for all conv/dense layers; relevance summed over channels, unit: logits.

    The output relevance is the target logit, so for a bias-free network with conservative rules the map
    sums to the logit.

    Args:
        rule: ``"alpha-beta"`` (kwargs ``alpha``, ``beta``; Zennit requires alpha - beta = 1) or
            ``"epsilon"`` (kwarg ``epsilon``).
        first_layer: rule of the first conv/dense layer: ``"zbox"`` (bounded input domain), ``"flat"``, or
            ``"same"`` (`rule` everywhere, as the implementation the paper used).
        low, high: ZBox input bounds (a float or one value per channel, in the model's normalised input
            space); None: each image's per-channel min / max.
        **rule_kwargs: parameters of `rule`.
    """

    unit = "logit"
    #: the rules' stabilisers and relevance conservation need fp32
    supports_bf16 = False

    @classmethod
    def unsupported(cls, model: ZooModel) -> str | None:
        return transformer_reason(model.module, "LRP", model.name)

    def __init__(
        self,
        model: ZooModel,
        rule: Literal["alpha-beta", "epsilon"],
        first_layer: Literal["zbox", "flat", "same"] = "zbox",
        low: Bound = None,
        high: Bound = None,
        **rule_kwargs: float,
    ) -> None:
        super().__init__(model)
        rules: dict[str, type[Hook]] = {"alpha-beta": AlphaBeta, "epsilon": Epsilon}
        check_choice(rule, "rule", list(rules))
        check_choice(first_layer, "first_layer", ["zbox", "flat", "same"])
        self.rule = rules[rule](**rule_kwargs)
        self.first_layer, self.low, self.high = first_layer, low, high

    def _first_rule(self, inputs: torch.Tensor) -> Hook | None:
        if self.first_layer == "zbox":
            low = _per_channel(self.low, inputs.amin(dim=(2, 3), keepdim=True))
            high = _per_channel(self.high, inputs.amax(dim=(2, 3), keepdim=True))
            return ZBox(low=low, high=high)
        return Flat() if self.first_layer == "flat" else None

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        first = self._first_rule(inputs)
        composite = SpecialFirstLayerMapComposite(
            layer_map=[*layer_map_base(), (LinearLike, self.rule)],
            first_map=[(LinearLike, first)] if first is not None else [],
            canonizers=canonizers(),
        )
        x = inputs.detach().requires_grad_()
        with composite.context(self.model.module) as module:
            logits = module(x)
            index = target[:, None]
            output_relevance = torch.zeros_like(logits).scatter_(1, index, logits.gather(1, index).detach())
            (relevance,) = torch.autograd.grad(logits, x, grad_outputs=output_relevance)
        return relevance.sum(1)

