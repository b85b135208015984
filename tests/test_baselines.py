"""The ten baseline attribution methods: they run on VGG and ResNet models, leave the model as it was, and
compute what their papers define (checked on models whose answer is known)."""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infoflow.attribution.lrp  # noqa: F401
from infoflow.attribution import METHODS
from infoflow.attribution.baselines import input_gradient
from infoflow.attribution.pattern import PatternAttribution
from infoflow.errors import ConfigError, DataError
from infoflow.models.layers import vgg_layers
from infoflow.models.zoo import ZooModel, get_model

BASELINES = [
    "random",
    "occlusion-8",
    "occlusion-14",
    "gradient",
    "saliency",
    "smoothgrad",
    "integrated-gradients",
    "guided-backprop",
    "lrp-a1b0",
    "lrp-eps5",
    "gradcam",
    "guided-gradcam",
    "pattern-attribution",
]
#: fewer samples/steps where the method's cost scales with them (the defaults are checked separately)
CHEAP = {"smoothgrad": {"samples": 3}, "integrated-gradients": {"n_steps": 4}}


@cache
def zoo(name: str, size: int) -> ZooModel:
    torch.manual_seed(0)
    return get_model(name, input_size=(3, size, size))


class TinyVGG(nn.Module):
    """A torchvision-VGG-shaped network (features / avgpool / classifier), small enough for exact checks."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_vgg() -> ZooModel:
    torch.manual_seed(0)
    module = TinyVGG().double().eval()
    return ZooModel("tinyvgg", module, 5, (3, 16, 16), layers=vgg_layers(module))


def wrap(module: nn.Module, num_classes: int, input_size: tuple[int, int, int]) -> ZooModel:
    return ZooModel("toy", module.double().eval(), num_classes, input_size)


def linear_model(input_size: tuple[int, int, int] = (3, 16, 16), num_classes: int = 3, bias: bool = False):
    torch.manual_seed(1)
    c, h, w = input_size
    return wrap(
        nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes, bias=bias)), num_classes, input_size
    )


def make(name: str, model: ZooModel, **kwargs):
    method = METHODS.get(name)(model, **{**CHEAP.get(name, {}), **kwargs})
    if name == "pattern-attribution":
        g = torch.Generator().manual_seed(0)
        images = torch.randn(8, *model.input_size, generator=g, dtype=next(model.module.parameters()).dtype)
        method.fit([{"image": images}])
    return method


def hooks_left(module: nn.Module) -> list[str]:
    return [
        name
        for name, m in module.named_modules()
        if m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or m._backward_pre_hooks
        or "forward" in vars(m)
    ]


def run_and_check(name: str, model: ZooModel) -> torch.Tensor:
    """Run `name` on two images; check the map and that the model is exactly as before."""
    module = model.module
    state = copy.deepcopy(module.state_dict())
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    c, h, w = model.input_size
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0)).to(next(module.parameters()))
    x_before = x.clone()
    maps = make(name, model).attribute(x, [1, 3])
    assert maps.shape == (2, h, w)
    assert maps.dtype.is_floating_point and torch.isfinite(maps).all()
    assert not maps.requires_grad
    assert torch.equal(x, x_before) and not x.requires_grad
    after = module.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert {n: p.requires_grad for n, p in module.named_parameters()} == flags
    assert all(p.grad is None for p in module.parameters())
    assert not module.training and hooks_left(module) == []
    return maps


def test_registry_has_the_ten_baselines() -> None:
    assert set(BASELINES) <= set(METHODS.names())


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in ("pattern-attribution", "lrp-a1b0") else n
        for n in BASELINES
    ],
)
def test_runs_on_vgg16(name: str) -> None:
    run_and_check(name, zoo("vgg16", 32))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "lrp-a1b0" else n for n in BASELINES[:-1]]
)
def test_runs_on_resnet18(name: str) -> None:
    maps = run_and_check(name, zoo("resnet18", 64))
    if name in ("gradcam", "guided-gradcam"):  # layer4 is 2x2 at 64x64: the upsampled map is not constant
        assert maps.std() > 0


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("model", ["tinyvgg", "shapesnet", "resnet20"])
def test_runs_on_small_models(name: str, model: str) -> None:
    if model == "resnet20" and name == "pattern-attribution":
        pytest.skip("not supported on ResNets: see test_pattern_attribution_rejects_resnets")
    run_and_check(name, tiny_vgg() if model == "tinyvgg" else zoo(model, 64 if model == "shapesnet" else 32))


def test_paper_defaults() -> None:
    model = zoo("shapesnet", 64)
    smooth = METHODS.get("smoothgrad")(model)
    assert (smooth.samples, smooth.noise) == (50, 0.15)
    ig = METHODS.get("integrated-gradients")(model)
    assert ig.kwargs["n_steps"] == 50 and ig.mean_baseline
    for patch in (8, 14):
        occ = METHODS.get(f"occlusion-{patch}")(model)
        assert occ.kwargs["sliding_window_shapes"] == occ.kwargs["strides"] == (3, patch, patch)
        assert occ.mean_baseline
    assert METHODS.get("gradcam")(model).method.layer is model.module.conv4


def test_random_is_seeded_uniform_noise() -> None:
    model, x = zoo("shapesnet", 64), torch.randn(3, 3, 64, 64)
    a, b, c = (METHODS.get("random")(model, seed=s).attribute(x, 0) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 64, 64) and a.min() >= 0 and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.02
    # a map depends on its image only: the same in any batch, order or process; different images differ
    random = METHODS.get("random")(model, seed=7)
    assert torch.equal(random.attribute(x[[2, 0]], 0), a[[2, 0]])
    assert torch.equal(random.attribute(x[1:2], 0)[0], a[1]) and not torch.equal(a[0], a[1])


def test_gradient_and_saliency_of_a_linear_model_are_its_weights() -> None:
    model = linear_model()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    weights = model.module[1].weight.view(3, 3, 16, 16)
    grad = METHODS.get("gradient")(model).attribute(x, [0, 2])
    torch.testing.assert_close(grad, weights[[0, 2]].sum(1))
    sal = METHODS.get("saliency")(model).attribute(x, [0, 2])
    torch.testing.assert_close(sal, weights[[0, 2]].abs().amax(1))
    smooth = METHODS.get("smoothgrad")(model, samples=5).attribute(x, [0, 2])  # noise cannot move a constant
    torch.testing.assert_close(smooth, weights[[0, 2]].sum(1))


def test_integrated_gradients_completeness() -> None:
    model = zoo("resnet20", 32)
    module = copy.deepcopy(model.module).double()
    model = ZooModel("resnet20", module, 10, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    maps = METHODS.get("integrated-gradients")(model).attribute(x, [4, 7])
    with torch.no_grad():
        drop = (module(x) - module(x.mean((2, 3), keepdim=True).expand_as(x)))[[0, 1], [4, 7]]
    torch.testing.assert_close(maps.sum((1, 2)), drop, rtol=2e-2, atol=1e-3)
    # and on a linear model it is exactly (x - baseline) * w
    linear = linear_model()
    weights = linear.module[1].weight.view(3, 3, 16, 16)
    ig = METHODS.get("integrated-gradients")(linear).attribute(x[:, :, :16, :16], 1)
    torch.testing.assert_close(
        ig, ((x[:, :, :16, :16] - x[:, :, :16, :16].mean((2, 3), keepdim=True)) * weights[1]).sum(1)
    )


def test_smoothgrad_noise_is_seeded_and_scaled_per_image() -> None:
    # f(x) = sum(x^2) / 2 has gradient x: SmoothGrad's noise averages out, to within its std / sqrt(samples)
    class HalfSquare(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x**2).flatten(1).sum(1, keepdim=True) / 2

    model = wrap(HalfSquare(), 1, (1, 8, 8))
    x = torch.stack([torch.linspace(0, 1, 64), torch.linspace(0, 100, 64)]).view(2, 1, 8, 8).double()
    a, b = (METHODS.get("smoothgrad")(model, samples=400, seed=3).attribute(x, 0) for _ in range(2))
    torch.testing.assert_close(a, b)
    error = (a - x[:, 0]).flatten(1).std(1)
    expected = 0.15 * torch.tensor([1.0, 100.0], dtype=torch.float64) / 20  # std 0.15 * range, 400 samples
    torch.testing.assert_close(error, expected, rtol=0.2, atol=0)


def test_occlusion_of_a_linear_model_is_the_tile_drop() -> None:
    # logit = sum(w * x): occluding a tile with the channel mean drops the logit by sum_tile w * (x - mean)
    model = linear_model((3, 32, 32), num_classes=1)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    contribution = model.module[1].weight.view(1, 3, 32, 32) * (x - x.mean((2, 3), keepdim=True))
    for patch in (8, 14):  # 14 leaves partial tiles at the border (28..31), which are occluded too
        maps = METHODS.get(f"occlusion-{patch}")(model, perturbations_per_eval=5).attribute(x, 0)
        tile_sums = F.avg_pool2d(contribution.sum(1, keepdim=True), patch, ceil_mode=True, divisor_override=1)
        expected = tile_sums.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, 0, :32, :32]
        torch.testing.assert_close(maps, expected.float())  # Captum's Occlusion returns float32


def test_occlusion_highlights_exactly_the_region_the_logit_reads() -> None:
    class RegionSum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 8:16, 16:24].sum((1, 2, 3))[:, None]

    model = wrap(RegionSum(), 1, (3, 32, 32))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) + 1
    x[:, :, 8:16, 16:24] += 1  # above the mean, so occluding the region lowers the logit
    maps = METHODS.get("occlusion-8")(model).attribute(x, 0)
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:16, 16:24] = True
    assert (maps[:, region] > 0).all() and (maps[:, ~region] == 0).all()


def guided_relu_reference(model: ZooModel, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    """Guided Backprop by swapping every ReLU for one whose backward passes only positive gradients."""

    class GuidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            ctx.save_for_backward(z)
            return z.clamp(min=0)

        @staticmethod
        def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            (z,) = ctx.saved_tensors
            return g.clamp(min=0) * (z > 0)

    class Swapped(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return GuidedReLU.apply(z)

    module = copy.deepcopy(model.module)
    for parent in module.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, Swapped())
    return input_gradient(module, x, torch.tensor(target))


def test_guided_backprop_and_guided_gradcam() -> None:
    model = zoo("shapesnet", 64)
    x = torch.randn(2, 3, 64, 64)
    gbp = METHODS.get("guided-backprop")(model).attribute(x, [0, 3])
    torch.testing.assert_close(gbp, guided_relu_reference(model, x, [0, 3]).abs().amax(1))
    # Grad-CAM >= 0, so max_c |GBP_c * CAM| = CAM * max_c |GBP_c|
    cam = METHODS.get("gradcam")(model).attribute(x, [0, 3])
    guided = METHODS.get("guided-gradcam")(model).attribute(x, [0, 3])
    torch.testing.assert_close(guided, cam * gbp)


def test_gradcam_matches_its_definition() -> None:
    model = zoo("shapesnet", 64)
    m = model.module
    x = torch.randn(2, 3, 64, 64)
    maps = METHODS.get("gradcam")(model).attribute(x, [1, 2])
    assert maps.shape == (2, 64, 64) and (maps >= 0).all() and maps.max() > 0
    with torch.no_grad():
        features = m.conv4(m.pool3(m.conv3(m.pool2(m.conv2(m.pool1(m.conv1(x)))))))
    features.requires_grad_()
    logits = m.fc(torch.flatten(m.avgpool(features), 1))
    (grad,) = torch.autograd.grad(logits[[0, 1], [1, 2]].sum(), features)
    cam = (grad.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True).relu()
    expected = F.interpolate(cam, size=(64, 64), mode="bilinear")[:, 0]
    torch.testing.assert_close(maps, expected.detach())
    # a paper layer name picks another layer, at its own resolution before upsampling
    coarse = METHODS.get("gradcam")(model, layer="conv2").attribute(x, [1, 2])
    assert coarse.shape == (2, 64, 64) and not torch.allclose(coarse, maps)


def test_lrp_epsilon_on_a_linear_model() -> None:
    model = linear_model(num_classes=2)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    w = model.module[1].weight.view(2, 3, 16, 16)
    y = (x * w[1]).sum((1, 2, 3))
    eps5 = METHODS.get("lrp-eps5")(model, first_layer="same").attribute(x, 1)
    expected = (x * w[1]).sum(1) * (y / (y + 5 * y.sign())).view(2, 1, 1)
    torch.testing.assert_close(eps5, expected)  # epsilon = 5 absorbs y * 5 / (|y| + 5) of the relevance
    lrp0 = METHODS.get("lrp-eps5")(model, first_layer="same", epsilon=1e-12).attribute(x, 1)
    torch.testing.assert_close(lrp0, (x * w[1]).sum(1))  # LRP-0 of a linear model: gradient x input


def test_lrp_alpha1_beta0_on_a_linear_model() -> None:
    model = linear_model(num_classes=2)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    z = x * model.module[1].weight.view(2, 3, 16, 16)[1]
    y = z.sum((1, 2, 3)).view(2, 1, 1, 1)
    positive = z.clamp(min=0)
    expected = (y * positive / positive.sum((1, 2, 3), keepdim=True)).sum(1)
    torch.testing.assert_close(METHODS.get("lrp-a1b0")(model, first_layer="same").attribute(x, 1), expected)


@pytest.mark.parametrize("name", ["lrp-a1b0", "lrp-eps5"])
def test_lrp_conserves_relevance_in_a_bias_free_relu_network(name: str) -> None:
    torch.manual_seed(2)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4, bias=False),
    )
    model = wrap(module, 4, (3, 16, 16))
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    logits = module(x)[range(3), [0, 1, 2]]
    kwargs = {"epsilon": 1e-12} if name == "lrp-eps5" else {}
    maps = METHODS.get(name)(model, **kwargs).attribute(x, [0, 1, 2])  # ZBox input layer
    # conserved up to the rules' 1e-6 stabilisers
    torch.testing.assert_close(maps.sum((1, 2)), logits.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", ["resnet20", "shapesnet"])
def test_lrp0_equals_gradient_times_input_through_canonizers(model_name: str) -> None:
    """LRP-0 everywhere equals gradient x input for ReLU networks: checks BatchNorm folding and that the
    skip connections' sums split the relevance (resnet20's canonizer)."""
    base = zoo(model_name, 64 if model_name == "shapesnet" else 32)
    module = copy.deepcopy(base.module).double()
    torch.manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so the folding matters
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model = ZooModel(model_name, module, base.num_classes, base.input_size)
    x = torch.randn(2, *base.input_size, dtype=torch.float64)
    lrp0 = METHODS.get("lrp-eps5")(model, epsilon=1e-12, first_layer="same").attribute(x, [1, 2])
    expected = (input_gradient(module, x, torch.tensor([1, 2])) * x).sum(1)
    assert (lrp0 - expected).abs().max() < 1e-3 * expected.abs().max()


def test_lrp_rejects_unknown_rules() -> None:
    with pytest.raises(ConfigError, match=r"^rule=gamma: not a valid choice; choose one of: alpha-beta \| epsilon"):
        infoflow.attribution.lrp.LRP(zoo("shapesnet", 64), rule="gamma")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^first_layer=box: not a valid choice; choose one of: zbox \| flat \| same"):
        METHODS.get("lrp-eps5")(zoo("shapesnet", 64), first_layer="box")


def signal_data(n: int, a: torch.Tensor, distractor: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s, d = (
        torch.randn(n, 1, generator=g, dtype=torch.float64),
        torch.randn(n, 1, generator=g, dtype=torch.float64),
    )
    return s * a + 2 * d * distractor  # (n, features)


def test_pattern_of_a_linear_model_is_the_signal_direction() -> None:
    """x = a s + d (distractor); the filter w with w^T d = 0, w^T a = 1 reads y = s: the pattern is a."""
    a = torch.tensor([1.0, 0.5, -1.0, 0.0], dtype=torch.float64)
    distractor = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    w = torch.tensor([0.5, 0.0, -0.5, -0.5], dtype=torch.float64)
    assert w @ distractor == 0 and w @ a == 1
    for relu in (False, True):  # linear estimator for the logits; two-component a_+ before a ReLU
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(4, 1, bias=False)]
        if relu:
            layers += [nn.ReLU(), nn.Linear(1, 1, bias=False)]
        model = wrap(nn.Sequential(*layers), 1, (1, 2, 2))
        with torch.no_grad():
            model.module[1].weight.copy_(w)
            if relu:
                model.module[3].weight.fill_(1.0)
        x = signal_data(100_000, a, distractor).view(-1, 1, 2, 2)
        method = PatternAttribution(model).fit([{"image": chunk} for chunk in x.split(10_000)])
        torch.testing.assert_close(method.layers[0].pattern[0], a, atol=0.03, rtol=0)
        if not relu:  # the attribution backpropagates y through w * a
            images = x[:3]
            y = images.flatten(1) @ w
            expected = (w * method.layers[0].pattern[0] * y[:, None]).abs().view(3, 2, 2)
            torch.testing.assert_close(method.attribute(images, 0), expected)


def test_pattern_attribution_backpropagates_through_w_times_a() -> None:
    """With every pattern set to 1, PatternAttribution is |gradient x logit|: checks the max-pool and ReLU
    switches, BatchNorm folding and flattening of the backward pass."""
    for model in (tiny_vgg(), zoo("shapesnet", 64)):
        method = make("pattern-attribution", model)
        for layer in method.layers:
            assert layer.pattern is not None and layer.pattern.shape == layer.weight.shape
            layer.pattern = torch.ones_like(layer.weight)
        x = torch.randn(2, *model.input_size).to(next(model.module.parameters()))
        target = torch.tensor([1, 3])
        logits = model.module(x)[[0, 1], target].detach()
        expected = (input_gradient(model.module, x, target) * logits.view(2, 1, 1, 1)).abs().sum(1)
        torch.testing.assert_close(
            method.attribute(x, target), expected, rtol=1e-4, atol=1e-5 * expected.max()
        )


def test_pattern_attribution_needs_fit() -> None:
    with pytest.raises(RuntimeError, match=r"fit\(dataloader\)"):
        METHODS.get("pattern-attribution")(tiny_vgg()).attribute(torch.randn(1, 3, 16, 16).double(), 0)
    with pytest.raises(DataError, match="no batches"):
        METHODS.get("pattern-attribution")(tiny_vgg()).fit([])


@pytest.mark.parametrize("name", ["resnet18", "resnet20"])
def test_pattern_attribution_rejects_resnets(name: str) -> None:
    with pytest.raises(ConfigError, match="VGG, AlexNet, ShapesNet"):  # refused through `unsupported`
        METHODS.get("pattern-attribution")(zoo(name, 32))


def test_requires_grad_flags_are_restored() -> None:
    model = tiny_vgg()
    params = list(model.module.parameters())
    for p in params[::2]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in params]
    for name in ("gradient", "lrp-eps5", "gradcam"):
        METHODS.get(name)(model).attribute(torch.randn(1, 3, 16, 16).double(), 0)
        assert [p.requires_grad for p in params] == flags and all(p.grad is None for p in params)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smoothgrad", "integrated-gradients"])
def test_paper_settings_on_vgg16(name: str) -> None:
    model = zoo("vgg16", 32)
    maps = METHODS.get(name)(model).attribute(torch.randn(2, 3, 32, 32), [0, 1])
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
