"""`infoflow.models.wrap`: a custom nn.Module (CNN and token model) explained with its own layer names; errors."""

from __future__ import annotations

import pytest
import torch
from conftest import explain_one_at_a_time
from torch import nn

import infoflow
from infoflow.attribution import METHODS
from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2
from infoflow.errors import ConfigError, InputError
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.interface import unsupported
from infoflow.models import SplitModel, wrap

SIZE = 32


class Net(nn.Module):
    """A small CNN with a skip connection: stem -> stages.0 -> stages.1 (+ skip) -> pooled logits."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
                                     nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())])
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[0](self.stem(x))
        x = x + self.stages[1](x)
        return self.fc(x.mean((2, 3)))


class Tokens(nn.Module):
    """A tiny token model: 4x4 patches of 8 pixels, one class token, two MLP-mixing blocks, class-token head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU()) for _ in range(2)])
        self.mix = nn.Linear(17, 17)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.proj(x).flatten(2).transpose(1, 2)], 1)
        for block in self.blocks:
            t = t + block(t)
            t = t + self.mix(t.transpose(1, 2)).transpose(1, 2)
        return self.head(t[:, 0])


def cnn():
    torch.manual_seed(0)
    return wrap(Net(), input_size=(3, SIZE, SIZE), num_classes=5, layers={"stem": "stem", "block1": "stages.0",
                "block2": "stages.1"}, mean=(0.5,) * 3, std=(0.25,) * 3, name="net")


def tokens():
    torch.manual_seed(0)
    return wrap(Tokens(), input_size=(3, SIZE, SIZE), num_classes=3, layers={"block1": "blocks.0", "block2": "blocks.1"},
                num_prefix_tokens=1, mean=(0.5,) * 3, std=(0.25,) * 3)


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_wrap_is_exported_and_names_the_layers() -> None:
    assert infoflow.models.wrap is wrap
    model = cnn()
    assert model.layers == {"stem": "stem", "block1": "stages.0", "block2": "stages.1"}
    assert model.conv_layers() == ["stem", "block1", "block2"] and model.mean == (0.5,) * 3
    assert wrap(Net(), input_size=(3, SIZE, SIZE), num_classes=5, layers=["stages.1"]).layers == {"stages.1": "stages.1"}
    tok = tokens()
    assert tok.layers == {"block1": "block1", "block2": "block2"}
    with torch.no_grad():
        assert tok.layer_module("block1")(torch.zeros(2, 17, 16)).shape == (2, 16, 4, 4)


@pytest.mark.parametrize("make", [cnn, tokens])
def test_head_and_tail_equal_the_full_model_and_keep_the_feature(make) -> None:
    model = make()
    x = images(2)
    with torch.no_grad():
        full = model.module(x)
        for layer in model.layers:
            split = SplitModel(model.module, model.layer_path(layer))
            feature = split.head(x)
            kept = feature.clone()
            assert feature.dim() == 4
            assert torch.allclose(split.tail(feature, x), full, atol=1e-6), layer
            assert torch.equal(feature, kept)


def test_the_token_adapter_leaves_the_forward_pass_unchanged() -> None:
    torch.manual_seed(0)
    plain = Tokens()
    x = images(2)
    with torch.no_grad():
        before = plain(x)
        after = wrap(plain, input_size=(3, SIZE, SIZE), num_classes=3, layers=["blocks.0"], num_prefix_tokens=1).module(x)
    assert torch.equal(before, after)


@pytest.mark.parametrize("make", [cnn, tokens])
def test_batched_per_sample_equals_one_image_at_a_time(make) -> None:
    model = make()
    x, target = images(2), torch.tensor([0, 2])
    iba = PerSampleIBA(model, "block1", seed=7, steps=2, copies=2, batch_size=2)
    iba.fit([{"image": images(8, s)} for s in range(2)])
    batched = iba.explain(x, target).heatmap
    assert torch.allclose(batched, explain_one_at_a_time(iba, x, target, seed=7), atol=1e-4 * float(batched.max()))


def test_the_class_token_passes_the_bottleneck_unchanged() -> None:
    model = tokens()
    net = model.module
    x = images(2)
    seen: list[torch.Tensor] = []
    # registered after wrap's adapter hook, so it sees block1's output as the network continues with it
    hook = net.blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        net(x)
    clean = seen.pop()
    iba = PerSampleIBA(model, "block1", seed=3, steps=2, copies=2, batch_size=2)
    iba.fit([{"image": images(8, s)} for s in range(2)])
    seen.clear()
    iba.attribute(x, 0)
    hook.remove()
    assert len(seen) > 2
    for t in seen:
        reps = t.shape[0] // 2
        assert torch.equal(t[:, 0], clean[:, 0].repeat_interleave(reps, 0))  # bitwise: never noised
    assert not torch.allclose(seen[-1][:, 1:], clean[:, 1:].repeat_interleave(seen[-1].shape[0] // 2, 0))


@pytest.mark.parametrize("make", [cnn, tokens])
def test_every_method_runs_or_refuses_clearly(make) -> None:
    model = make()
    ran = []
    for name in METHODS.names():
        reason = unsupported(name, model)
        if reason is not None:
            with pytest.raises(ConfigError):
                METHODS.get(name)(model)
            continue
        if name in ("readout", "ground-truth"):  # a readout checkpoint / the data's masks: covered in test_timm
            continue
        kwargs = {"iba": {"layer": "block1", "steps": 1, "copies": 2}, "smoothgrad": {"samples": 2},
                  "integrated-gradients": {"n_steps": 2}, "gradcam": {"layer": "block1"},
                  "guided-gradcam": {"layer": "block1"}}.get(name, {})
        method = METHODS.get(name)(model, **kwargs)
        if method.requires_fit or name == "iba":
            method.fit([{"image": images(8, s)} for s in range(2)])
        maps = method.attribute(images(1), 1)
        assert maps.shape == (1, SIZE, SIZE) and torch.isfinite(maps).all(), name
        ran.append(name)
    assert {"iba", "saliency", "gradcam", "occlusion-8"} <= set(ran)


@pytest.mark.parametrize("make", [cnn, tokens])
def test_layerwise_sid_is_finite_and_meets_its_constraint(make) -> None:
    model = make()
    features = LayerFeatures(model.module, {"block1": model.layer_path("block1")}, model.mean, model.std)
    images01 = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    df2 = estimate_delta_f2(features, images01, samples=4)
    cfg = SIDConfig(steps=30, eval_samples=16, tol=0.15)
    sid = compute_sid(features, images01[:1], df2, cfg)
    assert torch.isfinite(sid.maps).all()
    assert sid.converged.all() and ((sid.ratio_fresh - 1).abs() <= cfg.tol).all(), sid.ratio_fresh


# ---------------------------------------------------------------- errors


def test_a_module_path_that_does_not_exist_lists_close_names() -> None:
    with pytest.raises(ConfigError, match=r"layers\['b'\]='stages\.5': no such module in Net; close module paths: "
                                          r"stages\.1, stages\.0"):
        wrap(Net(), input_size=(3, SIZE, SIZE), num_classes=5, layers={"b": "stages.5"})


def test_a_layer_that_is_not_a_map_or_tokens_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"layer 'fc' \(fc\): its output must be a feature map \(N, C, h, w\) or a "
                                          r"token sequence \(N, L, C\), got \(2, 5\)"):
        wrap(Net(), input_size=(3, SIZE, SIZE), num_classes=5, layers=["fc"])


def test_a_model_without_num_classes_logits_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"must return logits of shape \(N, num_classes\) = \(2, 10\).*got \(2, 5\)"):
        wrap(Net(), input_size=(3, SIZE, SIZE), num_classes=10)


def test_a_wrong_input_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="fails on images of input_size=\\(1, 32, 32\\)"):
        wrap(Net(), input_size=(1, SIZE, SIZE), num_classes=5)
    with pytest.raises(ConfigError, match="input_size must be \\(C, H, W\\)"):
        wrap(Net(), input_size=(SIZE, SIZE), num_classes=5)
    model = cnn()
    with pytest.raises(InputError, match=r"expects images of shape \(N, 3, 32, 32\), got \(1, 3, 16, 16\)"):
        METHODS.get("saliency")(model).attribute(torch.zeros(1, 3, 16, 16), 0)


def test_a_token_layer_without_a_square_grid_asks_for_num_prefix_tokens() -> None:
    with pytest.raises(ConfigError, match="17 tokens; minus num_prefix_tokens=0 that is 17, not a square"):
        wrap(Tokens(), input_size=(3, SIZE, SIZE), num_classes=3, layers=["blocks.0"])
