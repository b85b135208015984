"""Vision Transformers: token layers as patch maps, splitting, IBA, SID, rollout and the unsupported methods."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from conftest import explain_one_at_a_time
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from infoflow.attribution import METHODS
from infoflow.data.shapes import ShapesDataModule
from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2
from infoflow.errors import ConfigError
from infoflow.iba.bottleneck import capacity_to_heatmap
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.readout import ReadoutBottleneck, fit_statistics
from infoflow.models import SplitModel, get_model
from infoflow.models.layers import swin_layers, vit_layers
from infoflow.models.vit import TokenSwin, TokenViT
from infoflow.models.zoo import ZooModel
from infoflow.tasks.readout import ReadoutModule


def shapesvit(seed: int = 0) -> ZooModel:
    """The random-weight shapesvit with a random classifier (torchvision initialises a ViT's head to zero, so
    that every gradient would vanish)."""
    torch.manual_seed(seed)
    model = get_model("shapesvit")
    torch.nn.init.normal_(model.module.heads.head.weight, std=0.5)
    return model


def tiny_vit(seed: int = 0) -> tuple[ZooModel, VisionTransformer]:
    """A 2-block ViT on 32x32 images (4x4 patch grid) and the torchvision network it wraps."""
    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=4).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision's zero head has no gradients
    module = TokenViT(vit).eval()
    return ZooModel("tiny-vit", module, 4, (3, 32, 32), "none", vit_layers(module)), vit


def tiny_swin(seed: int = 0) -> tuple[ZooModel, SwinTransformer]:
    torch.manual_seed(seed)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 1], num_heads=[1, 2], window_size=[2, 2],
                           num_classes=4).eval()
    module = TokenSwin(swin).eval()
    return ZooModel("tiny-swin", module, 4, (3, 32, 32), "none", swin_layers(module)), swin


@pytest.mark.parametrize("name", ["vit_b_16", "vit_b_32", "swin_t", "convnext_tiny", "shapesvit"])
def test_layer_names_of_every_new_model_resolve(name: str) -> None:
    model = get_model(name)
    modules = dict(model.module.named_modules())
    assert all(model.layer_path(layer) in modules for layer in model.layers)
    assert model.conv_layers() and "fc" in model.layers
    expected = {"vit_b_16": ["embed", "block1", "block12"], "vit_b_32": ["block12"], "shapesvit": ["block6"],
                "swin_t": ["embed", "stage1", "stage2_1", "stage3_6", "stage4"],
                "convnext_tiny": ["stem", "stage1_3", "stage3_9", "stage4"]}[name]
    assert set(expected) <= set(model.layers)
    with pytest.raises(ValueError, match="valid layers: .*" + expected[-1]):
        model.layer_path("conv99")
    if name.startswith("vit"):
        assert model.layer_path("encoder.layers.encoder_layer_5") == "encoder.layers.encoder_layer_5"


def test_token_layers_are_patch_maps_and_the_wrappers_equal_torchvision() -> None:
    for (model, tv), layer, shape in ((tiny_vit(), "block1", (16, 4, 4)), (tiny_swin(), "stage2", (16, 4, 4))):
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(model.module(x), tv(x), atol=1e-6)
            feature = SplitModel(model.module, model.layer_path(layer)).head(x)
        assert feature.shape == (3, *shape)


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin])
def test_head_and_tail_equal_the_full_model(make) -> None:
    model, _ = make()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.module(x)
        for layer in model.conv_layers():
            split = SplitModel(model.module, model.layer_path(layer))
            assert split.needs_input == isinstance(model.module, TokenViT)  # Swin keeps the fx split
            assert torch.allclose(split.tail(split.head(x), x), full, atol=1e-6), layer


def _vit_iba(**kwargs) -> tuple[PerSampleIBA, torch.Tensor]:
    model = shapesvit()
    images = torch.randn(32, *model.input_size)
    iba = PerSampleIBA(model, "block3", seed=7, steps=3, copies=4, **kwargs)
    iba.fit([{"image": images[i : i + 16]} for i in range(0, 32, 16)])
    return iba, images[:3]


def test_batched_per_sample_equals_one_image_at_a_time_on_a_token_layer() -> None:
    iba, x = _vit_iba(batch_size=2)
    x, target = x[:2], torch.tensor([0, 2])
    batched = iba.explain(x, target)
    assert batched.capacity.shape == (2, 64, 8, 8) and batched.heatmap.shape == (2, 64, 64)
    single = explain_one_at_a_time(iba, x, target, seed=7)
    assert torch.allclose(batched.heatmap, single, atol=1e-4 * float(single.max()))
    # bits per pixel, the image total preserved
    assert torch.allclose(batched.heatmap.sum((1, 2)), batched.total_bits, rtol=1e-4)


def test_the_class_token_passes_the_bottleneck_unchanged() -> None:
    iba, x = _vit_iba(batch_size=2)
    x = x[:2]
    vit = iba.model.module
    clean: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    after_block3 = vit.encoder.layers[2].register_forward_hook(lambda _m, _i, out: clean.append(out.detach()))
    with torch.no_grad():
        vit(x)
    after_block3.remove()
    into_block4 = vit.encoder.layers[3].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    iba.attribute(x, 0)
    into_block4.remove()
    assert len(seen) > 3  # the optimisation's noisy passes
    for tokens in seen:
        reps = tokens.shape[0] // x.shape[0]
        cls = clean[0][:, :1].repeat_interleave(reps, 0)
        assert torch.equal(tokens[:, :1], cls)  # bitwise: the class token is never noised
    assert not torch.allclose(seen[-1][:, 1:], clean[0][:, 1:].repeat_interleave(seen[-1].shape[0] // 2, 0))


def test_capacity_is_zero_where_the_bottleneck_is_closed() -> None:
    iba, x = _vit_iba()
    bottleneck = iba.bottleneck
    r = iba.split.head(x).detach()
    closed = torch.zeros_like(r)
    z, cap = bottleneck(r, closed, noise=torch.zeros_like(r))
    assert cap.eq(0).all()
    assert torch.allclose(z, bottleneck.mean.expand_as(r) * bottleneck.active)  # no trace of r is left
    _, open_cap = bottleneck(r, torch.full_like(r, 0.9))
    assert (open_cap * bottleneck.active).sum() > 0
    half = torch.zeros_like(r)
    half[..., :4] = 0.9  # left half of the patch grid open
    heat = capacity_to_heatmap(bottleneck.capacity(r, half), (64, 64))
    assert heat[..., 40:].abs().max() <= 1e-6 * heat.max()  # closed patches give zero bits (bilinear blends 36..40)
    assert torch.allclose(heat.sum((1, 2)), bottleneck.capacity(r, half).sum((1, 2, 3)) / math.log(2), rtol=1e-5)


def test_attention_rollout_equals_a_direct_matrix_product() -> None:
    model, vit = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    maps = METHODS.get("attention-rollout")(model).attribute(x, 0)
    # direct: tokens through the blocks, attention softmax(q k^T / sqrt(d)) per head from the in-projection
    with torch.no_grad():
        tokens = torch.cat([vit.class_token.expand(2, -1, -1), vit.conv_proj(x).flatten(2).transpose(1, 2)], 1)
        tokens = tokens + vit.encoder.pos_embedding
        joint = torch.eye(17).expand(2, 17, 17)
        for block in vit.encoder.layers:
            mha = block.self_attention
            h = block.ln_1(tokens)
            q, k, _ = (h @ mha.in_proj_weight.T + mha.in_proj_bias).chunk(3, -1)
            heads, dh = mha.num_heads, 16 // mha.num_heads
            q, k = (t.view(2, 17, heads, dh).transpose(1, 2) for t in (q, k))
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1).mean(1)
            a = 0.5 * attn + 0.5 * torch.eye(17)
            joint = (a / a.sum(-1, keepdim=True)) @ joint
            tokens = block(tokens)
    expected = F.interpolate(joint[:, 0, 1:].reshape(2, 1, 4, 4), size=(32, 32), mode="bilinear")[:, 0]
    assert torch.allclose(maps, expected, atol=1e-5)


def test_gradcam_runs_on_a_block_map() -> None:
    model = shapesvit()
    gradcam = METHODS.get("gradcam")(model)
    assert gradcam.method.layer is model.module.block5  # block6's patch tokens do not reach the logits
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    assert gradcam.attribute(x, target).shape == (2, 64, 64)
    raw = gradcam.method.attribute(x.requires_grad_(), target=target)  # before the ReLU: (N, 1, 8, 8)
    assert raw.shape == (2, 1, 8, 8) and raw.abs().sum() > 0
    last = LayerGradCam(model.module, model.module.block6).attribute(x, target=target)
    assert last.eq(0).all()


def test_readout_trains_on_shapesvit(tmp_path: Path) -> None:
    model = shapesvit()
    dm = ShapesDataModule(num_train=32, num_val=16, num_test=16, batch_size=16)
    dm.setup("fit")
    readout = ReadoutBottleneck(model, "block3", ["block2", "block3", "block4", "fc"])
    readout.set_statistics(fit_statistics(readout, dm.train_dataloader(), 32))
    before = [p.detach().clone() for p in readout.net.parameters()]
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}
    data = {"_target_": "infoflow.data.shapes.ShapesDataModule", "seed": 0}
    module = ReadoutModule(readout, beta=10.0, lr=1e-2, meta=readout.meta(data), output_dir=tmp_path)
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.fit(module, datamodule=dm)
    assert all(not torch.equal(a, b) for a, b in zip(before, readout.net.parameters(), strict=True))
    assert all(torch.equal(weights[k], v) for k, v in model.module.state_dict().items())
    x = next(iter(dm.val_dataloader()))["image"][:2]
    features, _ = readout.features(x)
    assert readout.lam(features).shape == (2, 64, 8, 8)


def test_sid_meets_its_constraint_on_a_vit_layer() -> None:
    model, _ = tiny_vit()
    mean, std = (0.5,) * 3, (0.25,) * 3
    features = LayerFeatures(model.module, {"block1": "block1"}, mean, std)
    images01 = torch.rand(4, 3, 32, 32)
    df2 = estimate_delta_f2(features, images01, samples=8)
    cfg = SIDConfig(steps=30, eval_samples=32, tol=0.1)
    sid = compute_sid(features, images01[:1], df2, cfg)
    assert sid.maps.shape[-2:] == (32, 32)
    assert sid.converged.all() and ((sid.ratio_fresh - 1).abs() <= cfg.tol).all(), sid.ratio_fresh


@pytest.mark.parametrize("method", ["lrp-eps5", "lrp-a1b0", "pattern-attribution"])
def test_lrp_and_pattern_attribution_refuse_transformers(method: str) -> None:
    model, _ = tiny_vit()
    with pytest.raises(ConfigError, match="transformer"):
        METHODS.get(method)(model)
    swin, _ = tiny_swin()
    with pytest.raises(ConfigError, match="transformer"):
        METHODS.get(method)(swin)


def test_attention_rollout_refuses_a_cnn() -> None:
    with pytest.raises(ConfigError, match="attention-rollout needs a ViT"):
        METHODS.get("attention-rollout")(get_model("shapesnet"))


def test_ru_decoders_upsample_from_the_patch_grid() -> None:
    from infoflow.discarding.decoder import DecoderNet

    model = shapesvit()
    x = torch.randn(2, 3, 64, 64)
    feature = SplitModel(model.module, "block2").head(x).detach()
    decoder = DecoderNet(feature.shape[1:], (3, 64, 64))
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.up) == 3  # 8 -> 64: three doublings
    assert decoder(feature).shape == (2, 3, 64, 64)
    swin, _ = tiny_swin()  # a 4x4 stage-2 grid under 32x32 images
    grid = SplitModel(swin.module, swin.layer_path("stage2")).head(torch.randn(2, 3, 32, 32)).detach()
    assert DecoderNet(grid.shape[1:], (3, 32, 32))(grid).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_sanity_cascade_randomises_the_block_behind_each_token_layer(make) -> None:
    """The token-map layers have no parameters: the randomisation sanity check re-initialises the block
    that computes each of them, top down, and nothing below it."""
    from infoflow.metrics.sanity import cascading_randomization

    model, _ = make()
    layers = [name for name in model.layers if name != "fc"]
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    for name, randomized in cascading_randomization(model, layers, seed=0):
        owner = model.parameter_path(name)
        assert owner != model.layer_path(name)
        changed = {k for k, v in randomized.module.state_dict().items() if not torch.equal(v, before[k])}
        assert any(k.startswith(owner + ".") for k in changed), name
        below = {model.parameter_path(b) for b in layers[: layers.index(name)]} - {owner}  # Swin: stageS aliases
        assert not any(k.startswith(path + ".") for path in below for k in changed), name


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_bf16_per_sample_and_metrics_run_on_transformers(make) -> None:
    """bf16 on a transformer: the prepared copy keeps its LayerNorms in fp32 (autocast runs them in fp32),
    so the Per-Sample fit and the perturbation metrics run and agree with fp32 (random weights: a loose bound)."""
    from infoflow.metrics.degradation import Degradation
    from infoflow.utils import precision as P

    if not P.is_supported("bf16", "cpu"):
        pytest.skip("this CPU has no native bf16")
    model, _ = make()
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    layer = "block1" if make is tiny_vit else "stage1_1"
    maps, areas = {}, {}
    for precision in ("32", "bf16"):
        iba = PerSampleIBA(model, layer, seed=0, steps=3, copies=2, precision=precision)
        iba.fit([{"image": torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))}])
        maps[precision] = iba.attribute(x, y)
        metric = Degradation(model.module, (32, 32), tile_size=8, num_points=5, precision=precision)
        metric.update(x, y, maps["32"])
        areas[precision] = float(metric.compute().score)
    assert maps["bf16"].dtype == torch.float32 and torch.isfinite(maps["bf16"]).all()
    assert not torch.equal(maps["32"], maps["bf16"])
    a, b = maps["32"].flatten(1), maps["bf16"].flatten(1)
    assert (F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)) > 0.9).all()
    assert abs(areas["32"] - areas["bf16"]) < 0.05
