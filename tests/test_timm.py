"""timm models by name (`timm/<arch>`, random weights, 32x32): named layers, splitting, IBA, tokens, SID, methods."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import compose_config, explain_one_at_a_time
from torch.utils.data import DataLoader

from infoflow.attribution import METHODS, Attribution
from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2
from infoflow.errors import ConfigError, DataError
from infoflow.iba.estimator import fit_estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.readout import ReadoutBottleneck, ReadoutIBA, fit_statistics
from infoflow.interface import unsupported
from infoflow.models import SplitModel, get_model
from infoflow.models.zoo import ZooModel

timm = pytest.importorskip("timm")

SIZE = 32
#: one per family: ResNet, ViT (class token), DeiT (class + distillation token), ConvNeXt, EfficientNet
ARCHS = ["resnet18", "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "convnext_atto", "efficientnet_b0"]
#: the slower families of the per-method and SID tests run with ``-m slow``; the default suite keeps a ViT and a CNN
SLOW = pytest.mark.slow
FAST_METHODS = [pytest.param(a, marks=SLOW) if a in ("resnet18", "convnext_atto", "efficientnet_b0") else a
                for a in ARCHS]
FAST_SID = [pytest.param(a, marks=SLOW) if a in ("resnet18", "efficientnet_b0") else a for a in ARCHS]
VITS = {"vit_tiny_patch16_224": 1, "deit_tiny_distilled_patch16_224": 2}


def timm_model(arch: str, seed: int = 0) -> ZooModel:
    torch.manual_seed(seed)
    kwargs = {"patch_size": 8} if arch in VITS else {}
    model = get_model(f"timm/{arch}", num_classes=4, input_size=(3, SIZE, SIZE)) if not kwargs else None
    if model is None:  # a 4x4 patch grid at 32x32: the ViT's layers are maps (N, C, 4, 4)
        from infoflow.models import timm_models

        module = timm_models._add_token_maps(timm.create_model(arch, num_classes=4, img_size=SIZE, **kwargs).eval())
        model = ZooModel(f"timm/{arch}", module, 4, (3, SIZE, SIZE), "none", timm_models.timm_layers(module),
                         (0.5,) * 3, (0.25,) * 3)
    return model


def layer_of(model: ZooModel) -> str:
    """A layer with a map of at least 4x4 at 32x32: ``block3`` (ViTs, 4x4 patch grid), else ``stage2`` (stride 8)."""
    return "block3" if "block3" in model.layers else "stage2"


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_layers_normalisation_and_input_size_come_from_timm() -> None:
    model = get_model("timm/resnet18", num_classes=4, input_size=(3, SIZE, SIZE))
    assert model.layers == {"stem": "act1", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3",
                            "stage4": "layer4", "mid": "layer2", "fc": "fc"}
    assert model.mean == pytest.approx((0.485, 0.456, 0.406)) and model.std == pytest.approx((0.229, 0.224, 0.225))
    assert get_model("timm/resnet18").input_size == (3, 224, 224)
    vit = get_model("timm/vit_tiny_patch16_224", num_classes=4, input_size=(3, SIZE, SIZE))
    assert list(vit.layers)[:3] == ["embed", "block1", "block2"] and vit.layers["block12"] == "block12"
    assert vit.mean == pytest.approx((0.5,) * 3) and vit.parameter_path("block3") == "blocks.2"
    with torch.no_grad():
        assert vit.module(images(2)).shape == (2, 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_head_and_tail_equal_the_full_model_and_leave_the_feature_unchanged(arch: str) -> None:
    model = timm_model(arch)
    x = images(2)
    with torch.no_grad():
        full = model.module(x)
        for layer in model.conv_layers():
            split = SplitModel(model.module, model.layer_path(layer))
            feature = split.head(x)
            assert feature.dim() == 4, layer
            kept = feature.clone()
            assert torch.allclose(split.tail(feature, x), full, atol=1e-5), layer
            assert torch.equal(feature, kept), layer


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_per_sample_equals_one_image_at_a_time(arch: str) -> None:
    model = timm_model(arch)
    layer = layer_of(model)
    x, target = images(2), torch.tensor([0, 2])
    iba = PerSampleIBA(model, layer, seed=7, steps=2, copies=2, batch_size=2)
    iba.fit([{"image": images(8, s)} for s in range(2)])
    batched = iba.explain(x, target).heatmap
    single = explain_one_at_a_time(iba, x, target, seed=7)
    assert batched.shape == (2, SIZE, SIZE) and torch.isfinite(batched).all()
    assert torch.allclose(batched, single, atol=1e-4 * float(single.abs().max()) + 1e-7)


@pytest.mark.parametrize(("arch", "prefix"), VITS.items())
def test_the_class_and_distillation_tokens_pass_the_bottleneck_unchanged(arch: str, prefix: int) -> None:
    model = timm_model(arch)
    vit = model.module
    assert vit.num_prefix_tokens == prefix
    x = images(2)
    clean: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    hook = vit.blocks[2].register_forward_hook(lambda _m, _i, out: clean.append(out.detach()))
    with torch.no_grad():
        vit(x)
    hook.remove()
    iba = PerSampleIBA(model, "block3", seed=3, steps=2, copies=2, batch_size=2)
    iba.fit([{"image": images(8, s)} for s in range(2)])
    hook = vit.blocks[3].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    iba.attribute(x, 0)
    hook.remove()
    assert len(seen) > 2
    for tokens in seen:
        reps = tokens.shape[0] // 2
        assert torch.equal(tokens[:, :prefix], clean[0][:, :prefix].repeat_interleave(reps, 0))
    noisy = seen[-1][:, prefix:]
    assert not torch.allclose(noisy, clean[0][:, prefix:].repeat_interleave(noisy.shape[0] // 2, 0))


def _method(name: str, model: ZooModel) -> Attribution:
    batches = [{"image": images(8, s)} for s in range(2)]
    if name == "readout":  # the registry builds it from a checkpoint; here from a fresh readout
        layer = layer_of(model)
        readout = ReadoutBottleneck(model, layer, [layer, model.conv_layers()[-1]])
        readout.set_statistics(fit_statistics(readout, DataLoader([{"image": x} for b in batches for x in b["image"]],
                                                                  batch_size=8), 16))
        return ReadoutIBA(readout)
    layer = layer_of(model)
    kwargs = {"iba": {"layer": layer, "steps": 1, "copies": 2}, "smoothgrad": {"samples": 2},
              "integrated-gradients": {"n_steps": 2}, "gradcam": {"layer": layer},
              "guided-gradcam": {"layer": layer}}.get(name, {})
    method = METHODS.get(name)(model, **kwargs)
    if name == "iba":
        method.set_estimator(fit_estimator(SplitModel(model.module, model.layer_path(layer)).head, batches, 16))
    elif method.requires_fit:
        method.fit(batches)
    return method


@pytest.mark.parametrize("arch", FAST_METHODS)
def test_every_method_runs_or_refuses_clearly(arch: str) -> None:
    model = timm_model(arch)
    ran, refused = [], []
    for name in METHODS.names():
        reason = unsupported(name, model)
        if reason is not None:
            with pytest.raises(ConfigError, match=re.escape(reason[:40])):
                METHODS.get(name)(model)
            refused.append(name)
            continue
        method = _method(name, model)
        if not method.images_only:  # ground-truth: maps from the data's masks, whatever the model
            continue
        maps = method.attribute(images(1), 1)
        assert maps.shape == (1, SIZE, SIZE) and torch.isfinite(maps).all(), name
        ran.append(name)
    assert {"iba", "readout", "saliency", "occlusion-8"} <= set(ran)
    if arch in VITS:  # no sound LRP rules for attention
        assert {"lrp-eps5", "lrp-a1b0", "pattern-attribution"} <= set(refused)
    else:  # rollout needs attention
        assert "attention-rollout" in refused


@pytest.mark.parametrize("arch", FAST_SID)
def test_layerwise_sid_is_finite_and_meets_its_constraint(arch: str) -> None:
    model = timm_model(arch)
    features = LayerFeatures(model.module, {"mid": model.layer_path(layer_of(model))}, model.mean, model.std)
    images01 = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    df2 = estimate_delta_f2(features, images01, samples=4)
    cfg = SIDConfig(steps=30, eval_samples=16, tol=0.15)
    sid = compute_sid(features, images01[:1], df2, cfg)
    assert torch.isfinite(sid.maps).all() and sid.maps.shape[-2:] == (SIZE, SIZE)
    assert sid.converged.all() and ((sid.ratio_fresh - 1).abs() <= cfg.tol).all(), sid.ratio_fresh


def test_weights_from_a_local_file_go_through_timms_pretrained_path(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = timm.create_model("resnet18", num_classes=4)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = get_model("timm/resnet18", weights=str(path), num_classes=4, input_size=(3, SIZE, SIZE))
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(model.module(x), source.eval()(x), atol=1e-6)
    with pytest.raises(DataError, match="no such file"):
        get_model("timm/resnet18", weights=str(tmp_path / "missing.pth"), num_classes=4)


def test_a_pretrained_tag_offline_names_the_file_to_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: patch it too
    with pytest.raises(DataError, match=r"timm/resnet18\.a1_in1k.*weights=/path/to/that/file"):
        get_model("timm/resnet18", weights="a1_in1k", num_classes=1000)


def test_an_unknown_architecture_lists_similar_names() -> None:
    with pytest.raises(ConfigError, match="not a timm architecture; similar: .*resnet18"):
        get_model("timm/resnet18x")


def test_the_timm_config_builds_the_named_architecture() -> None:
    cfg = compose_config("evaluate", ["model=timm", "model.arch=convnext_atto"])
    assert cfg.model.name == "timm/convnext_atto" and cfg.layer == "mid" and cfg.weights == "none"
    assert math.isfinite(len(cfg.model.readout_layers))


# ---------------------------------------------------------------- the entry points

TINY = ["data.image_size=32", "data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
        "logger=csv"]


def test_evaluate_heatmaps_with_a_timm_model(tmp_path: Path) -> None:
    from infoflow.analyses import run_analysis

    cfg = compose_config("evaluate", [*TINY, "model=timm", "model.arch=resnet18", "layer=stage2", "num_images=2",
                                      "method.estimator_samples=16", "method.steps=2", "method.copies=2",
                                      f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"])
    result = run_analysis(cfg)
    assert result["num_images"] == 2 and math.isfinite(result["inside_outside_ratio"])
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 2 and (tmp_path / "heatmaps.csv").exists()
    assert any("timm_resnet18" in p.name for p in (tmp_path / "cache").rglob("*.pt"))  # the estimator's cache key


def test_train_readout_with_a_timm_model(tmp_path: Path) -> None:
    from infoflow.tasks import run_task

    cfg = compose_config("train", [*TINY, "task=readout", "model=timm", "model.arch=resnet18", "layer=stage2",
                                   "task.readout_layers=[stage2,stage3,fc]", "weights=none", "trainer.max_epochs=1",
                                   "task.estimator_samples=16", "task.num_heatmaps=0", "callbacks=none",
                                   f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"])
    run_task(cfg)
    assert list(tmp_path.rglob("readout*.pt")) or list(tmp_path.rglob("*.ckpt"))
