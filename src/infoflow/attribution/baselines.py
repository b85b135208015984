"""The paper's baseline attribution methods (Schulz et al. 2020, section 4.1) behind the common interface.

Captum does the work where it can: one wrapper, `CaptumAttribution`, parameterised by the Captum class and
its arguments. SmoothGrad (noise scaled per image) and Random are written here; LRP lives in `lrp.py`,
PatternAttribution in `pattern.py`.

Channels of an (N, C, H, W) input attribution are reduced to (N, H, W) as in the paper's code:
signed sum for Gradient, SmoothGrad, Integrated Gradients and LRP (sum keeps IG's and LRP's conservation);
max over channels of the absolute value for Saliency, Guided Backprop and Guided Grad-CAM (Simonyan et al.
2014); the sum of absolute values for PatternAttribution; the mean for Occlusion, whose value is the same on
every channel (the logit drop of the tile). Grad-CAM has one channel.

Precision (`FrozenAttribution.set_precision`, ``precision`` in the method configs): the network's forward
and backward run under autocast, the maps are returned as fp32. Methods whose arithmetic is not valid in
bf16 set ``supports_bf16 = False`` (LRP: its stabilised rules must conserve relevance; PatternAttribution:
its float64-fitted patterns and signal backward) and run in fp32 with a warning that says so.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from captum.attr import (
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerGradCam,
    Occlusion,
    Saliency,
)
from torch import nn

from infoflow.errors import ConfigError
from infoflow.interface import METHODS, Attribution
from infoflow.models.vit import TokenViT
from infoflow.models.zoo import ZooModel
from infoflow.utils.modules import frozen
from infoflow.utils.precision import PrecisionFallbackWarning, autocast, resolve_precision, to_fp32
from infoflow.utils.validation import check_choice

Reduction = Literal["sum", "mean", "max-abs", "sum-abs"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def reduce_channels(attribution: torch.Tensor, how: Reduction) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) by a signed sum, a mean, the max of |.|, or the sum of |.| over channels."""
    if how == "sum":
        return attribution.sum(1)
    if how == "mean":
        return attribution.mean(1)
    if how == "max-abs":
        return attribution.abs().amax(1)
    if how == "sum-abs":
        return attribution.abs().sum(1)
    raise ConfigError(f"reduce={how}: not a valid choice; choose one of: {' | '.join(REDUCTIONS)}")


def channel_mean(inputs: torch.Tensor) -> torch.Tensor:
    """The per-image channel mean of (N, C, H, W) images, expanded to (N, C, H, W)."""
    return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs)


def input_gradient(module: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d logit[target] / d inputs, (N, C, H, W), without touching parameter gradients."""
    x = inputs.detach().requires_grad_()
    logits = module(x)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    return grad


class FrozenAttribution(Attribution):
    """An `Attribution` that runs with the model's parameters frozen and returns detached fp32 maps, the
    network's passes in `precision` (``32`` unless `set_precision` chose another)."""

    #: whether the method's arithmetic is valid in bf16 / fp16 (else `set_precision` keeps fp32)
    supports_bf16: bool = True
    precision: str = "32"

    def set_precision(self, value: str | int) -> FrozenAttribution:
        """Run the network's passes in `value` (``32`` | ``bf16`` | ``16-mixed``): fp32 with a
        `PrecisionFallbackWarning` where the hardware or the method (``supports_bf16``) does not support it."""
        precision = resolve_precision(value, self.device)
        if precision != "32" and not self.supports_bf16:
            warnings.warn(f"{type(self).__name__} is not valid in reduced precision: running in fp32 "
                          f"(precision={precision} ignored)", PrecisionFallbackWarning, stacklevel=2)
            precision = "32"
        self.precision = precision
        return self

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | int | list[int]) -> torch.Tensor:
        with frozen(self.model.module), autocast(self.precision, inputs.device):
            return to_fp32(super().attribute(inputs, target).detach())


@METHODS.register("random")
class Random(FrozenAttribution):
    """Uniform noise in [0, 1), (N, H, W): the naive baseline.

    Each image's map is drawn from a generator seeded with the CRC-32 of the image's bytes (started at `seed`): it
    depends only on the image and the seed, not on batching, order or the number of processes (an
    evaluation split over DDP ranks gives the numbers of one process).
    """

    def __init__(self, model: ZooModel, seed: int = 0) -> None:
        super().__init__(model)
        self.seed = seed

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, _, h, w = inputs.shape
        maps = []
        for image in inputs.detach().cpu().contiguous():
            key = zlib.crc32(image.flatten().view(torch.uint8).numpy(), self.seed & 0xFFFFFFFF)  # 32-bit seed
            generator = torch.Generator().manual_seed(key)
            maps.append(torch.rand((h, w), generator=generator))
        return torch.stack(maps).to(inputs.device)



class CaptumAttribution(FrozenAttribution):
    """A Captum attribution method behind the common interface.

    Args:
        model: the zoo model.
        method: the Captum class (``captum.attr.Saliency``, ``IntegratedGradients``, ``LayerGradCam``, ...).
        reduce: how the (N, C, H, W) attribution is reduced over channels (see `reduce_channels`).
        layer: for Captum's layer methods, a paper layer name or module path.
        mean_baseline: pass the per-image channel mean image as Captum's ``baselines``.
        unit: unit of the map values.
        **kwargs: passed to ``method.attribute`` (``n_steps``, ``sliding_window_shapes``, ...).

    Maps smaller than the input (Grad-CAM's layer resolution) are upsampled bilinearly to (H, W).
    """

    def __init__(
        self,
        model: ZooModel,
        method: type,
        reduce: Reduction = "sum",
        layer: str | None = None,
        mean_baseline: bool = False,
        unit: str = "a.u.",
        **kwargs: Any,
    ) -> None:
        check_choice(reduce, "reduce", REDUCTIONS)
        super().__init__(model)
        args = (model.layer_module(layer),) if layer is not None else ()
        self.method = method(model.module, *args)
        self.reduce: Reduction = reduce
        self.mean_baseline = mean_baseline
        self.unit = unit
        self.kwargs = kwargs

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kwargs = dict(self.kwargs)
        if self.mean_baseline:
            kwargs["baselines"] = channel_mean(inputs)
        # a leaf that requires grad: Captum neither warns nor toggles the caller's tensor
        attribution = self.method.attribute(inputs.detach().requires_grad_(), target=target, **kwargs)
        if attribution.shape[-2:] != inputs.shape[-2:]:
            attribution = F.interpolate(attribution, size=inputs.shape[-2:], mode="bilinear")
        return reduce_channels(attribution, self.reduce)


@METHODS.register("smoothgrad")
class SmoothGrad(FrozenAttribution):
    """SmoothGrad (Smilkov et al. 2017): the mean input gradient over noisy copies of each image.

    The noise std is ``noise`` times each image's value range (max - min over C, H, W), as in the paper's
    code; Captum's NoiseTunnel only takes one std per batch. Signed gradients, summed over channels.

    Args:
        samples: noisy copies per image.
        noise: noise std as a fraction of the image's value range.
        internal_batch_size: most images per forward/backward pass.
        seed: seed of the noise; two instances with the same seed produce the same maps.
    """

    def __init__(
        self,
        model: ZooModel,
        samples: int = 50,
        noise: float = 0.15,
        internal_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        self.samples, self.noise, self.seed = samples, noise, seed
        self.internal_batch_size = internal_batch_size
        self.generator: torch.Generator | None = None  # on the inputs' device, made at the first call

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = inputs.shape[0]
        value_range = (inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3))).view(n, 1, 1, 1)
        if self.generator is None or self.generator.device != inputs.device:
            self.generator = torch.Generator(inputs.device).manual_seed(self.seed)
        noise = torch.randn(
            (self.samples, *inputs.shape), generator=self.generator, device=inputs.device, dtype=inputs.dtype
        )
        noisy = (inputs + noise * self.noise * value_range).flatten(0, 1)  # (samples * N, C, H, W)
        targets = target.repeat(self.samples)
        size = self.internal_batch_size
        chunks = zip(noisy.split(size), targets.split(size), strict=True)
        grads = torch.cat([input_gradient(self.model.module, x, t) for x, t in chunks])
        return grads.view(self.samples, *inputs.shape).mean(0).sum(1)



def default_gradcam_layer(model: ZooModel) -> str:
    """The output of the last convolutional stage: VGG/AlexNet ``features[-1]`` (the last max-pool, as in
    the paper's code), the last ResNet block, ShapesNet ``conv4``, the last ConvNeXt or Swin block; for a ViT
    the last block but one, since the last block's patch tokens do not reach the logits (only its class
    token does), so their gradient is zero."""
    features = getattr(model.module, "features", None)
    if isinstance(features, nn.Sequential) and isinstance(features[-1], nn.MaxPool2d):
        return f"features.{len(features) - 1}"
    layers = model.conv_layers()
    return model.layer_path(layers[-2] if isinstance(model.module, TokenViT) else layers[-1])


@METHODS.register("occlusion-14", patch=14)
@METHODS.register("occlusion-8", patch=8)
def occlusion(model: ZooModel, patch: int, perturbations_per_eval: int = 16) -> Attribution:
    """Occlusion (Zeiler & Fergus 2014): the drop of the target logit when a patch x patch tile (stride = patch,
    border tiles clipped) is replaced by the per-image channel mean; unit: logits.
    `perturbations_per_eval` tiles are evaluated per forward pass (times the batch size)."""
    channels = model.input_size[0]
    return CaptumAttribution(
        model,
        Occlusion,
        reduce="mean",
        mean_baseline=True,
        unit="logit",
        sliding_window_shapes=(channels, patch, patch),
        strides=(channels, patch, patch),
        perturbations_per_eval=perturbations_per_eval,
    )



@METHODS.register("gradient")
def gradient(model: ZooModel) -> Attribution:
    """The input gradient of the target logit, summed over channels."""
    return CaptumAttribution(model, Saliency, reduce="sum", abs=False)


@METHODS.register("saliency")
def saliency(model: ZooModel) -> Attribution:
    """Saliency (Simonyan et al. 2014): the max over channels of the absolute input gradient."""
    return CaptumAttribution(model, Saliency, reduce="max-abs", abs=True)


@METHODS.register("integrated-gradients")
def integrated_gradients(
    model: ZooModel, n_steps: int = 50, internal_batch_size: int | None = None
) -> Attribution:
    """Integrated Gradients (Sundararajan et al. 2017) from the per-image channel mean, `n_steps`
    Gauss-Legendre steps, summed over channels: the map sums to logit(x) - logit(baseline)."""
    return CaptumAttribution(
        model,
        IntegratedGradients,
        reduce="sum",
        mean_baseline=True,
        unit="logit",
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
    )


@METHODS.register("guided-backprop")
def guided_backprop(model: ZooModel) -> Attribution:
    """Guided Backprop (Springenberg et al. 2015), max over channels of |.|."""
    return CaptumAttribution(model, GuidedBackprop, reduce="max-abs")


@METHODS.register("gradcam")
def gradcam(model: ZooModel, layer: str | None = None) -> Attribution:
    """Grad-CAM (Selvaraju et al. 2017) for the target class at `layer` (default: `default_gradcam_layer`),
    rectified and upsampled bilinearly to the input size."""
    layer = layer or default_gradcam_layer(model)
    return CaptumAttribution(model, LayerGradCam, reduce="sum", layer=layer, relu_attributions=True)


@METHODS.register("guided-gradcam")
def guided_gradcam(model: ZooModel, layer: str | None = None) -> Attribution:
    """Guided Grad-CAM: Guided Backprop times the bilinearly upsampled Grad-CAM, max over channels of |.|."""
    layer = layer or default_gradcam_layer(model)
    return CaptumAttribution(model, GuidedGradCam, reduce="max-abs", layer=layer, interpolate_mode="bilinear")
