"""No part of a network may overwrite a tensor infoflow keeps: in-place modules are off, the tails leave
their input alone, and Per-Sample IBA equals the reference loop on networks with in-place ReLUs (VGG,
AlexNet), where the cached feature used to be rectified by the tail."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from infoflow.iba.estimator import Estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.reference import naive_per_sample
from infoflow.models import SplitModel, disable_inplace, get_model, list_models

SMALL = {"alexnet": (3, 64, 64), "vgg16": (3, 32, 32), "vgg19": (3, 32, 32), "resnet18": (3, 32, 32),
         "resnet34": (3, 32, 32), "resnet50": (3, 32, 32)}


def _inplace_modules(module: nn.Module) -> list[str]:
    return [path for path, m in module.named_modules() if getattr(m, "inplace", False)]


def _with_inplace(module: nn.Module) -> nn.Module:
    """A copy of `module` with its ReLUs working in place again, as torchvision builds them."""
    other = copy.deepcopy(module)
    for m in other.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    return other


#: the large or deeper variants of families covered by the default suite (resnet20, resnet18, vgg16, shapesvit,
#: shapesnet_revised) run as slow tests; so do the 224 px transformers and ConvNeXt (minutes each on 2 cores)
_DEEPER = {"resnet32", "resnet44", "resnet34", "vgg19", "vgg16_revised", "vgg19_revised", "vit_b_16", "vit_b_32",
           "swin_t", "convnext_tiny"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _DEEPER else n
                                  for n in list_models()])
def test_every_tail_leaves_its_feature_unchanged(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, input_size=SMALL.get(name))
    assert _inplace_modules(model.module) == []
    x = torch.randn(1, *model.input_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cuts inside residual blocks fall back to hooks
        expected = model.module(x)
        for layer, path in model.layers.items():
            for use_fx in (True, False):
                split = SplitModel(model.module, path, use_fx=use_fx)
                feature = split.head(x)
                kept = feature.clone()
                logits = split.tail(feature, x)
                assert torch.equal(feature, kept), (name, layer, use_fx)
                assert torch.equal(logits, expected), (name, layer, use_fx)


def test_split_model_switches_off_inplace_on_a_plain_module() -> None:
    torch.manual_seed(0)
    module = _with_inplace(get_model("vgg16", input_size=(3, 32, 32)).module)
    layer = "features.17"  # conv4_1, followed by ReLU(inplace=True) in torchvision
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = module(x)
        feature = module.features[:18](x)
        kept = feature.clone()
        # what the fix prevents: an in-place tail rectifies the feature it is given
        module.features[18:](feature)
        assert not torch.equal(feature, kept) and torch.equal(feature, kept.relu())
        split = SplitModel(module, layer)
        assert _inplace_modules(module) == []
        feature = split.head(x)
        kept = feature.clone()
        assert torch.equal(split.tail(feature), expected)
        assert torch.equal(feature, kept)


def _per_sample(name: str, layer: str, size: tuple[int, int, int], **kwargs) -> tuple[PerSampleIBA, torch.Tensor]:
    """Per-Sample IBA on a random-weight zoo model with statistics from 16 random images."""
    torch.manual_seed(0)
    model = get_model(name, input_size=size)
    iba = PerSampleIBA(model, layer, seed=3, batch_size=2, **kwargs)
    with torch.no_grad():
        feature = iba.split.head(torch.randn(2, *size))
        est = Estimator(tuple(feature.shape[1:]))
        for _ in range(8):
            est.update(iba.split.head(torch.randn(2, *size)))
    iba.set_estimator(est)
    return iba, torch.randn(2, *size)


def _check_against_reference(iba: PerSampleIBA, x: torch.Tensor, targets: list[int], inplace: bool = True) -> None:
    """Fast path == the reference loop (full network from the input at every step, same noise), with the
    reference run on a copy whose ReLUs work in place as in torchvision."""
    heads: list[torch.Tensor] = []
    head = iba.split.head
    iba.split.head = lambda inputs: heads.append(head(inputs)) or heads[-1]  # type: ignore[method-assign]
    result = iba.explain(x, torch.tensor(targets))
    with torch.no_grad():
        assert torch.equal(heads[0], head(x)), "the cached feature was changed during explain()"
    network = _with_inplace(iba.model.module) if inplace else iba.model.module
    kw = {"steps": iba.steps, "copies": iba.copies}
    for i, t in enumerate(targets):
        ref = naive_per_sample(network, iba.layer, iba.bottleneck, x[i : i + 1], t,
                               generator=torch.Generator().manual_seed(iba.seed + i), **kw)
        fast = result.heatmap[i]
        corr = float(torch.corrcoef(torch.stack([ref.flatten(), fast.flatten()]))[0, 1])
        assert corr >= 0.999, corr
        assert (ref - fast).abs().max() <= 1e-3 * float(ref.abs().max()) + 1e-6


@pytest.mark.parametrize("layer", ["conv2", pytest.param("conv4", marks=pytest.mark.slow)])
def test_alexnet_per_sample_equals_the_reference_loop(layer: str) -> None:
    iba, x = _per_sample("alexnet", layer, (3, 224, 224), steps=3, copies=2)
    _check_against_reference(iba, x, [1, 7])


def test_vgg_sized_per_sample_equals_the_reference_loop() -> None:
    iba, x = _per_sample("vgg16", "conv4_1", (3, 64, 64), steps=3, copies=2)
    _check_against_reference(iba, x, [5, 9])


@pytest.mark.slow
def test_vgg16_conv4_1_per_sample_equals_the_reference_loop_at_224() -> None:
    iba, x = _per_sample("vgg16", "conv4_1", (3, 224, 224), steps=3, copies=2)
    _check_against_reference(iba, x, [5, 9])


def test_the_reference_loop_is_blind_to_inplace_modules() -> None:
    """The reference recomputes the layer output every step and injects a new tensor, so in-place ReLUs
    after the layer change nothing in it (bitwise), and the statistics it injects stay as they were."""
    iba, x = _per_sample("alexnet", "conv2", (3, 64, 64), steps=3, copies=2)
    mean, std = iba.bottleneck.mean.clone(), iba.bottleneck.std.clone()
    runs = []
    for network in (iba.model.module, _with_inplace(iba.model.module)):
        runs.append(naive_per_sample(network, iba.layer, iba.bottleneck, x[:1], 4, steps=3, copies=2,
                                     generator=torch.Generator().manual_seed(0)))
    assert _inplace_modules(iba.model.module) == []
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(iba.bottleneck.mean, mean) and torch.equal(iba.bottleneck.std, std)


def test_disable_inplace_keeps_outputs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Dropout(inplace=True), nn.ReLU6(inplace=True),
                        nn.LeakyReLU(inplace=True), nn.ELU(inplace=True), nn.SiLU(inplace=True),
                        nn.Hardtanh(inplace=True)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
        assert disable_inplace(net) == ["1", "2", "3", "4", "5", "6", "7"]
        assert torch.equal(net(x), before)
    assert disable_inplace(net) == []


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_torchvision_blur_equals_the_explicit_reflect_padded_convolution(sigma: float) -> None:
    import torch.nn.functional as F

    from infoflow.iba.bottleneck import GaussianBlur

    blur = GaussianBlur(sigma)
    assert sigma != 1.0 or blur.size == 5
    x = torch.rand(2, 3, 14, 11, requires_grad=True)
    pad = blur.size // 2
    y = F.pad(x.reshape(6, 1, 14, 11), (pad,) * 4, mode="reflect")
    expected = F.conv2d(y, blur.kernel).reshape(2, 3, 14, 11)
    out = blur(x)
    assert (out - expected).abs().max() <= 1e-6
    out.sum().backward()  # differentiable, as the mask's optimisation needs
    assert x.grad is not None and x.grad.shape == x.shape
