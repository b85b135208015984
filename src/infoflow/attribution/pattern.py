"""PatternAttribution (Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and
PatternAttribution") for sequential ReLU networks: VGG, AlexNet, ShapesNet.

For every conv/dense layer with weights w and output y = w^T x + b, `fit` estimates the signal pattern from
data. Layers followed by a ReLU use the two-component estimator on the samples (and, for convolutions, the
positions) where the neuron is active, y > 0:

    a_+ = (E+[x y] - E+[x] E+[y]) / (w^T E+[x y] - w^T E+[x] E+[y])

layers without a ReLU (the logits) the linear estimator, the same over all samples. `attribute` then
backpropagates the target logit through the network with every weight w replaced by w ⊙ a, keeping the
ReLU and max-pooling switches of the forward pass; the map is the sum over channels of the absolute
input signal (as the paper's code).

Only networks that are a plain chain of Conv2d/Linear (BatchNorm folded in, eval mode), ReLU, max/average
pooling, dropout and flatten, registered in forward order, are supported. ResNets are not: a skip
connection adds two signals, and the estimator above has no pattern for a sum of branches.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from infoflow.attribution.baselines import FrozenAttribution, reduce_channels
from infoflow.errors import DataError, NotFittedError
from infoflow.interface import METHODS
from infoflow.models.vit import transformer_reason
from infoflow.models.zoo import ZooModel

SUPPORTED = "sequential Conv2d/Linear (+BatchNorm) / ReLU / pooling networks: VGG, AlexNet, ShapesNet"
_PARAMETER_FREE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_SKIPPED = (nn.Dropout, nn.Identity, nn.Flatten)


@dataclass
class _Affine:
    """A conv or dense layer y = w * x + b (BatchNorm folded in) and, after fitting, its signal pattern a."""

    weight: torch.Tensor
    bias: torch.Tensor
    conv: dict[str, object] | None  # stride, padding, dilation, groups; None for dense layers
    relu: bool = False  # followed by a ReLU: two-component estimator
    pattern: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.linear(x.flatten(1), self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, **self.conv)  # type: ignore[arg-type]

    def input_grad(self, shape: torch.Size, grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Backward through the layer with `weight` in place of the layer's weights."""
        if self.conv is None:
            return (grad @ weight).view(shape)
        return conv2d_input(shape, weight, grad, **self.conv)  # type: ignore[arg-type]

    def weighted_sums(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """sum over samples (and positions) of g_k * x for every output k: the shape of the weights."""
        if self.conv is None:
            return g.T @ x.flatten(1)
        return conv2d_weight(x, self.weight.shape, g, **self.conv)  # type: ignore[arg-type]


class _SignalBackward(torch.autograd.Function):
    """The layer in the forward pass; in the backward pass its weights are replaced by w ⊙ a."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: _Affine) -> torch.Tensor:  # type: ignore[override]
        ctx.layer, ctx.shape = layer, x.shape
        return layer(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        layer: _Affine = ctx.layer
        return layer.input_grad(ctx.shape, grad, layer.weight * layer.pattern), None


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not list(m.children())]


def _fold(layer: _Affine, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    layer.weight = layer.weight * scale.view(-1, *[1] * (layer.weight.dim() - 1))
    layer.bias = (layer.bias - bn.running_mean) * scale + bn.bias


def build_chain(model: ZooModel) -> list[_Affine | nn.Module]:
    """The model as a list of steps (affine layers, ReLUs, pooling), checked against the model's output.

    Raises:
        NotImplementedError: the model is not a supported sequential network.
    """
    chain: list[_Affine | nn.Module] = []
    for m in _leaves(model.module):
        if isinstance(m, nn.Conv2d | nn.Linear):
            conv = None
            if isinstance(m, nn.Conv2d):
                conv = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
            bias = m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0])
            chain.append(_Affine(m.weight.detach(), bias.detach(), conv))
        elif isinstance(m, nn.BatchNorm2d) and chain and isinstance(chain[-1], _Affine):
            with torch.no_grad():
                _fold(chain[-1], m)
        elif isinstance(m, nn.ReLU):
            if chain and isinstance(chain[-1], _Affine):
                chain[-1].relu = True
            chain.append(nn.ReLU())
        elif isinstance(m, _PARAMETER_FREE):
            chain.append(m)
        elif not isinstance(m, _SKIPPED):
            raise NotImplementedError(
                f"PatternAttribution supports {SUPPORTED}; {model.name!r} has a {type(m).__name__}"
            )
    p = next(model.module.parameters())
    x = torch.randn(2, *model.input_size, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        expected = model.module(x)
        try:
            got = run_chain(chain, x)
        except RuntimeError:  # shapes do not chain
            got = None
    if (
        got is None
        or got.shape != expected.shape
        or (got - expected).abs().max() > 1e-4 * (1 + expected.abs().max())
    ):
        raise NotImplementedError(
            f"PatternAttribution supports {SUPPORTED}; {model.name!r} does not compute its layers in "
            "registration order (skip connections, as in ResNets, have no signal pattern)"
        )
    return chain


def run_chain(
    chain: list[_Affine | nn.Module], x: torch.Tensor, signal_backward: bool = False
) -> torch.Tensor:
    """Forward through the chain; with `signal_backward` the affine layers backpropagate w ⊙ a."""
    for step in chain:
        x = _SignalBackward.apply(x, step) if signal_backward and isinstance(step, _Affine) else step(x)
    return x


@METHODS.register("pattern-attribution")
class PatternAttribution(FrozenAttribution):
    """PatternAttribution; call `fit` on data before `attribute`.

    Args:
        max_batches: fit on at most this many batches (None: the whole dataloader).
    """

    requires_fit = True
    #: the patterns are fitted in float64 and applied by a custom signal backward: fp32 only
    supports_bf16 = False

    @classmethod
    def unsupported(cls, model: ZooModel) -> str | None:
        reason = transformer_reason(model.module, "PatternAttribution", model.name)
        if reason is not None:
            return reason
        try:
            build_chain(model)
        except NotImplementedError as err:  # not a sequential network (skip connections, other modules)
            return str(err)
        return None

    def __init__(self, model: ZooModel, max_batches: int | None = None) -> None:
        super().__init__(model)
        self.max_batches = max_batches
        self.chain = build_chain(model)  # raises NotImplementedError early for unsupported models
        self.fitted = False

    @property
    def layers(self) -> list[_Affine]:
        """The conv/dense layers; after `fit`, ``layers[i].pattern`` has the shape of ``layers[i].weight``."""
        return [step for step in self.chain if isinstance(step, _Affine)]

    @torch.no_grad()
    def fit(self, dataloader: Iterable[dict[str, torch.Tensor]]) -> PatternAttribution:
        """Estimate the signal patterns of all layers from the ``image`` of each batch (sums in float64),
        for the model's current weights and device."""
        self.chain, self.fitted = build_chain(self.model), False
        sums: list[dict[str, torch.Tensor]] = [{} for _ in self.layers]
        for batch in itertools.islice(dataloader, self.max_batches):
            x, layer_sums = batch["image"].to(self.device), iter(sums)
            for step in self.chain:
                y = step(x)
                if isinstance(step, _Affine):
                    _accumulate(next(layer_sums), step, x, y)
                x = y
        if not sums[0]:
            raise DataError("PatternAttribution.fit got no batches: the dataloader yielded no images")
        for layer, layer_sums in zip(self.layers, sums, strict=True):
            layer.pattern = _pattern(layer.weight.double(), layer_sums).to(layer.weight)
        self.fitted = True
        return self

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise NotFittedError("PatternAttribution has no signal patterns yet: call .fit(dataloader) first")
        x = inputs.detach().requires_grad_()
        logits = run_chain(self.chain, x, signal_backward=True)
        index = target[:, None]
        output_signal = torch.zeros_like(logits).scatter_(1, index, logits.gather(1, index).detach())
        (signal,) = torch.autograd.grad(logits, x, grad_outputs=output_signal)
        return reduce_channels(signal, "sum-abs")


def _accumulate(sums: dict[str, torch.Tensor], layer: _Affine, x: torch.Tensor, y: torch.Tensor) -> None:
    """Add one batch's sums of x*y, x, y and counts over the samples (and positions) where each output
    neuron is active (all of them for layers without a ReLU)."""
    active = (y > 0).to(y) if layer.relu else torch.ones_like(y)
    dims = [d for d in range(y.dim()) if d != 1]
    batch = {
        "xy": layer.weighted_sums(x, y * active),
        "x": layer.weighted_sums(x, active),
        "y": (y * active).sum(dims),
        "n": active.sum(dims),
    }
    for key, value in batch.items():
        if key in sums:
            sums[key] += value  # in place, in float64
        else:
            sums[key] = value.double()


def _pattern(weight: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """a = cov(x, y) / (w^T cov(x, y)) per output neuron from the (masked) sums, which it overwrites;
    0 where undefined (a neuron never active, or no signal)."""
    shape = (-1, *[1] * (weight.dim() - 1))
    n = s["n"].clamp(min=1).view(shape)
    mean_y = s["y"].view(shape) / n
    cov = s["xy"].div_(n).sub_(s["x"].div_(n).mul_(mean_y))
    denominator = torch.einsum("ij,ij->i", weight.flatten(1), cov.flatten(1))
    defined = (s["n"] > 1) & (denominator.abs() > 1e-12)
    return cov.mul_(torch.where(defined, 1 / denominator, 0.0).view(shape))

