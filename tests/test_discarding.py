"""Layer-wise information discarding: SID closed form, constraint, delta_f², decoders, RU, coherency."""

from __future__ import annotations

import math
import shutil

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from infoflow.data.shapes import ShapesDataModule
from infoflow.discarding import (
    ENTROPY_CONST,
    DeltaF2,
    LayerDecoder,
    LayerFeatures,
    MissingDecoderError,
    SIDConfig,
    coherency_report,
    compute_ru,
    compute_sid,
    concentration,
    decoder_path,
    delta_f2_for_model,
    estimate_delta_f2,
    feature_gradient_map,
    layerwise_ru,
    layerwise_sid,
    load_decoder,
    load_decoders,
    max_logit_change,
    object_mask,
    rescale_adjacent_layers,
    resolve_layers,
)
from infoflow.models.pretrained import cache_dir, default_weights_version
from infoflow.models.zoo import get_model

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
LAYERS = {"conv1": "0", "conv2": "2", "conv3": "5"}
_USER_CACHE = cache_dir()  # read at import, before each test points $INFOFLOW_CACHE at a temp dir


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) smooth random images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


FAST = SIDConfig(steps=100)


# --- SID ---------------------------------------------------------------------------------------


def test_linear_model_matches_closed_form():
    """h(x) = W x: sigma_i² = alpha ||W||_F² / (n c_i), c_i = ||W_:,i||², and delta_f² = ||W||_F²."""
    torch.manual_seed(0)
    n, alpha = 64, 1.5e-4
    weight = torch.randn(32, n) * torch.linspace(0.2, 3, n)
    linear = nn.Linear(n, 32, bias=False)
    linear.weight.data = weight
    features = LayerFeatures(nn.Sequential(nn.Flatten(), linear), {"lin": "1"}, [0.0], [1.0])
    x = torch.rand(2, 1, 8, 8)
    frob2 = weight.pow(2).sum().item()
    df2 = estimate_delta_f2(features, x, samples=64)["lin"]
    assert df2.value == pytest.approx(frob2, rel=0.1)  # Monte-Carlo estimate of E||W delta||²
    assert df2.rel_diff < 1e-4  # linear: no tau dependence

    c = weight.pow(2).sum(0)
    star = 0.5 * torch.log(alpha * frob2 / (n * c)).view(8, 8)
    result = compute_sid(features, x, {"lin": frob2}, SIDConfig(steps=300, eval_samples=256))
    got = result.log_sigma[:, 0]
    exact_ratio = (got.exp().pow(2).flatten(1) * c).sum(1) / (alpha * frob2)  # E||W (sigma * delta)||² / eps
    assert ((exact_ratio - result.ratio[:, 0]).abs() <= 4 * result.ratio_se[:, 0]).all()  # honest error bars
    assert torch.allclose(exact_ratio, torch.ones(2), atol=0.05)
    assert (got - star).abs().mean() < 0.06
    assert torch.corrcoef(torch.stack([got[0].flatten(), star.flatten()]))[0, 1] > 0.98
    optimum = star.mean().item() + ENTROPY_CONST
    assert result.per_pixel[:, 0] == pytest.approx([optimum, optimum], abs=0.03)
    assert result.total[:, 0] == pytest.approx(result.per_pixel[:, 0] * 64, rel=1e-5)
    assert torch.allclose(result.maps, result.log_sigma + 0.5 * math.log(2 * math.pi * math.e))


def _independent_ratio(
    features: LayerFeatures, x: torch.Tensor, sid, df2, layer: str, samples: int = 256, with_se: bool = False
):
    """E||h(x + sigma delta) - f||² / (alpha delta_f²) per image on fresh noise (and its standard error)."""
    j = sid.layers.index(layer)
    sigma = sid.log_sigma[:, j].exp()[:, None, None]
    g = torch.Generator().manual_seed(123)
    noise = torch.randn((x.shape[0], samples, *x.shape[1:]), generator=g)
    with torch.no_grad():
        f = features(x)[layer]
        fp = features((x[:, None] + sigma * noise).flatten(0, 1))[layer].view(x.shape[0], samples, -1)
    d = (fp - f.flatten(1)[:, None]).pow(2).sum(-1) / (1.5e-4 * df2[layer].value)
    return (d.mean(1), d.std(1) / math.sqrt(samples)) if with_se else d.mean(1)


def test_constraint_holds_at_the_end():
    net = small_cnn()
    features = LayerFeatures(net, LAYERS, MEAN, STD)
    x = smooth_images(2)
    df2 = estimate_delta_f2(features, x, samples=8)
    sid = compute_sid(features, x, df2, FAST)
    assert sid.converged.all()
    assert ((sid.ratio - 1).abs() <= sid.tol).all()
    for layer in LAYERS:  # also on fresh noise, not only on the noise the projection used
        ratio = _independent_ratio(features, x, sid, df2, layer)
        assert torch.allclose(ratio, torch.ones(2), atol=0.05), (layer, ratio)
    assert sid.lam.gt(0).all() and sid.maps.shape == (2, 3, 16, 16) and sid.per_pixel.shape == (2, 3)


def test_batched_over_layers_equals_one_layer_at_a_time():
    net = small_cnn()
    x = smooth_images(2)
    features = LayerFeatures(net, LAYERS, MEAN, STD)
    assert features.probe(x) == list(LAYERS) and features.prune
    df2 = estimate_delta_f2(features, x, samples=4)
    cfg = SIDConfig(steps=30, eval_samples=8)
    batched = compute_sid(features, x, df2, cfg)
    for j, (name, path) in enumerate(LAYERS.items()):
        single = compute_sid(LayerFeatures(net, {name: path}, MEAN, STD), x, {name: df2[name]}, cfg)
        assert torch.allclose(single.log_sigma[:, 0], batched.log_sigma[:, j], atol=1e-4)
        assert torch.allclose(single.ratio[:, 0], batched.ratio[:, j], atol=1e-4)


def test_rows_per_forward_do_not_change_the_result():
    net = small_cnn()
    x = smooth_images(2)
    features = LayerFeatures(net, LAYERS, MEAN, STD)
    df2 = {k: v.value for k, v in estimate_delta_f2(features, x, samples=4).items()}
    one = compute_sid(features, x, df2, SIDConfig(steps=10, eval_samples=8))
    chunked = compute_sid(features, x, df2, SIDConfig(steps=10, eval_samples=8, max_rows=8))
    assert torch.allclose(one.log_sigma, chunked.log_sigma, atol=1e-4)


def _scalar_linear(n: int = 64, seed: int = 0) -> tuple[LayerFeatures, torch.Tensor]:
    """h(x) = w . x, one output: ||h(x') - f||² = (w . sigma delta)² is a chi² with 1 degree of freedom
    times its mean (spread / mean = sqrt 2), the hardest case for a fixed small number of draws."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, n, generator=g) * torch.linspace(0.2, 3, n)
    linear = nn.Linear(n, 1, bias=False)
    linear.weight.data = w
    return LayerFeatures(nn.Sequential(nn.Flatten(), linear), {"lin": "1"}, [0.0], [1.0]), w


def _exact_ratio(sid, w: torch.Tensor, delta_f2: float) -> torch.Tensor:
    """(N,) E||w . (sigma delta)||² / (alpha delta_f²) in closed form for the single layer of `sid`."""
    return (sid.log_sigma[:, 0].exp().pow(2).flatten(1) * w.pow(2)).sum(1) / (SIDConfig().alpha * delta_f2)


def test_constraint_holds_in_expectation_not_only_on_the_projection_draws():
    """With the draws fixed at a few (the projection as it was), the closed-form E rho misses 1 by far more than
    the tolerance, while the in-sample ratio is within tol / 5; with the adaptive draws and the fresh check it
    is within the tolerance for every image, and the fresh ratio is an honest estimate of it."""
    features, w = _scalar_linear()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    df2 = w.pow(2).sum().item()
    few = SIDConfig(steps=40, eval_samples=16, max_eval_samples=16, fresh_rounds=0)
    with pytest.warns(UserWarning, match="not met within 5% on fresh noise draws"):
        old = compute_sid(features, x, {"lin": df2}, few)
    assert ((old.ratio - 1).abs() <= few.tol / 5).all()  # met on its own draws ...
    assert (_exact_ratio(old, w, df2) - 1).abs().max() > 2 * few.tol  # ... but not in expectation

    new = compute_sid(features, x, {"lin": df2}, SIDConfig(steps=40, eval_samples=16))
    exact = _exact_ratio(new, w, df2)
    assert ((exact - 1).abs() <= new.tol).all(), exact
    assert new.converged.all() and ((new.ratio_fresh - 1).abs() <= new.tol).all()
    assert ((new.ratio_fresh - exact[:, None]).abs() <= 4 * new.ratio_fresh_se).all()  # honest error bars
    assert (new.ratio_fresh_se <= 1.1 * new.tol / 4).all() and (new.ratio_se <= 1.1 * new.tol / 4).all()
    assert (new.draws > 16).all()  # more draws were needed than the first block


def test_fresh_ratio_outside_the_tolerance_is_a_warning_naming_the_pairs():
    features, w = _scalar_linear()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cfg = SIDConfig(steps=10, eval_samples=4, max_eval_samples=4, fresh_rounds=0)
    with pytest.warns(UserWarning) as record:
        sid = compute_sid(features, x, {"lin": w.pow(2).sum().item()}, cfg)
    message = str(record[-1].message)
    bad = (~sid.converged).nonzero().tolist()
    assert bad and ((sid.ratio_fresh - 1).abs() > cfg.tol).eq(~sid.converged).all()
    for i, _ in bad:
        assert f"(image {i}, lin: {sid.ratio_fresh[i, 0]:.3f} +- " in message
    assert message.count("(image ") == len(bad)


@pytest.fixture
def default_shapesnet(_isolated_cache):
    """The default (trained) shapesnet: its cached weights are copied from the user's cache when there (read
    only), else trained once into the test session's cache (minutes)."""
    name = f"shapesnet-c4-{default_weights_version()}.pt"
    if (_USER_CACHE / name).is_file() and not (_isolated_cache / name).is_file():
        _isolated_cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_USER_CACHE / name, _isolated_cache / name)
    dm = ShapesDataModule(num_classes=4, num_test=16)
    dm.setup("test")
    images01 = dm.denormalize(next(iter(dm.test_dataloader()))["image"])
    return get_model("shapesnet", "default", num_classes=4, input_size=dm.input_size), images01, dm


def _default_model_constraint(default_shapesnet, layers: list[str], images: int, cfg: SIDConfig) -> None:
    """SID's fresh ratio, and the test's own estimate on independent draws, are within tol at every layer."""
    model, images01, dm = default_shapesnet
    features = LayerFeatures(model.module, resolve_layers(model, layers), dm.mean, dm.std)
    df2 = estimate_delta_f2(features, images01, samples=8)
    x = images01[:images]
    sid = compute_sid(features, x, df2, cfg)
    assert ((sid.ratio_fresh - 1).abs() <= cfg.tol).all(), sid.ratio_fresh
    assert sid.converged.all()
    for layer in layers:  # independent draws: within tol up to 3 of their own standard errors
        mean, se = _independent_ratio(features, x, sid, df2, layer, samples=512, with_se=True)
        assert ((mean - 1).abs() <= cfg.tol + 3 * se).all(), (layer, mean, se)


def test_default_model_meets_the_constraint_in_expectation_at_conv4_and_fc(default_shapesnet):
    """The trained default shapesnet's fc is where a fixed 32 or 64 draws missed by up to 35 % (one image and a
    10 % tolerance keep this quick; the slow test below covers every layer at the default 5 %)."""
    _default_model_constraint(default_shapesnet, ["conv4", "fc"], 1, SIDConfig(steps=30, eval_samples=32, tol=0.1))


@pytest.mark.slow
def test_default_model_meets_the_constraint_in_expectation_at_every_layer(default_shapesnet):
    _default_model_constraint(
        default_shapesnet, ["conv1", "conv2", "conv3", "conv4", "fc"], 2, SIDConfig(steps=100, eval_samples=32)
    )


class _SkipAround(nn.Module):
    """A skip connection around the hooked layer: dropping its rows early is invalid."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) + x).mean((2, 3))


def test_pruning_falls_back_when_a_skip_crosses_the_layer():
    torch.manual_seed(0)
    net = _SkipAround().eval()
    features = LayerFeatures(net, {"a": "a", "b": "b"}, MEAN, STD)
    x = smooth_images(2, size=8)
    features.probe(x)
    assert not features.prune
    full = features(x)
    grouped = features(torch.cat([x[:1], x[1:]]), groups=[1, 1])
    assert torch.allclose(grouped["a"], full["a"][:1]) and torch.allclose(grouped["b"], full["b"][1:])


def test_zoo_end_to_end_with_delta_f2_cache(tmp_path, monkeypatch):
    model = get_model("shapesnet", "none")
    x = smooth_images(1, size=64)
    cfg = SIDConfig(steps=5, eval_samples=4)
    sid = layerwise_sid(model, x, MEAN, STD, config=cfg, cache_dir=str(tmp_path), delta_f2_samples=2)
    assert sid.layers == model.conv_layers() and sid.maps.shape == (1, 4, 64, 64)
    assert len(list(tmp_path.glob("*.pt"))) == 4
    import infoflow.discarding.delta_f as delta_f

    def fail(*args, **kwargs):
        raise AssertionError("delta_f² should come from the cache")

    monkeypatch.setattr(delta_f, "estimate_delta_f2", fail)
    features = LayerFeatures(model.module, resolve_layers(model), MEAN, STD)
    cached = delta_f2_for_model("shapesnet", "none", features, x, tmp_path, samples=2)
    assert torch.allclose(
        torch.tensor([cached[k].value for k in sid.layers], dtype=torch.float64), sid.delta_f2
    )
    with torch.no_grad():  # other weights: another cache entry, so the estimate is needed again
        model.module.conv1[0].weight.mul_(2)
    with pytest.raises(AssertionError, match="from the cache"):
        delta_f2_for_model("shapesnet", "none", features, x, tmp_path, samples=2)


# --- delta_f² ----------------------------------------------------------------------------------


def test_delta_f2_is_stable_under_halving_tau():
    net = small_cnn()
    features = LayerFeatures(net, LAYERS, MEAN, STD)
    x = smooth_images(4)
    default = estimate_delta_f2(features, x, samples=8)
    quarter = estimate_delta_f2(features, x, tau=default["conv1"].tau / 4, samples=8)
    for name in LAYERS:
        assert default[name].rel_diff < 0.01
        assert quarter[name].value == pytest.approx(default[name].value, rel=0.01)
        assert isinstance(default[name], DeltaF2) and default[name].value > 0


# --- decoders and RU ---------------------------------------------------------------------------


def _loader(images01: torch.Tensor, batch_size: int = 16) -> DataLoader:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    normalised = (images01 - mean) / std
    data = [{"image": img, "label": torch.tensor(0)} for img in normalised]
    return DataLoader(data, batch_size=batch_size)


def test_decoder_trains_saves_and_loads(tmp_path):
    net = small_cnn()
    encoder = LayerFeatures(net, {"conv3": "5"}, MEAN, STD)
    decoder = LayerDecoder(
        (16, 8, 8), (3, 16, 16), width=32, num_blocks=1, lr=3e-3, encoder=encoder, layer="conv3"
    )
    train, val = _loader(smooth_images(128, seed=1)), _loader(smooth_images(32, seed=2))
    trainer = pl.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = trainer.validate(decoder, val, verbose=False)[0]["val/mse"]
    trainer.fit(decoder, train, val)
    after = trainer.validate(decoder, val, verbose=False)[0]["val/mse"]
    assert after < 0.5 * before, (before, after)

    images = smooth_images(4, seed=3)
    feature = encoder(images)["conv3"]
    decoder.eval()
    expected = decoder(feature)
    for path in (decoder.save(tmp_path / "dec.pt"), tmp_path / "lightning.ckpt"):
        if path.suffix == ".ckpt":
            trainer.save_checkpoint(path)
        loaded = load_decoder(path)
        assert torch.allclose(loaded(feature), expected, atol=1e-5)
    with pytest.raises(ValueError, match="other weights"):
        load_decoder(tmp_path / "dec.pt", fingerprint="not-the-network")


def test_zoo_decoder_store_and_ru(tmp_path):
    model = get_model("shapesnet", "none")
    decoder = LayerDecoder.for_layer(model, "conv4", MEAN, STD, width=16, num_blocks=1)
    assert decoder.hparams.feature_shape == (64, 8, 8)
    x = smooth_images(2, size=64)
    batch = next(iter(_loader(x)))
    assert decoder.training_step(batch, 0).item() > 0  # untrained, but it runs on datamodule batches
    decoder.save(decoder_path(tmp_path, model.name, model.weights, "conv4", model.input_size))
    sid = layerwise_sid(
        model, x, MEAN, STD, ["conv4"], SIDConfig(steps=2, eval_samples=2), delta_f2_samples=1
    )
    ru = layerwise_ru(model, x, sid, MEAN, STD, str(tmp_path), samples=2)
    assert ru.maps.shape == (2, 1, 64, 64) and ru.maps.isfinite().all() and ru.layers == ["conv4"]
    with torch.no_grad():  # the decoder belongs to these weights only
        model.module.fc.bias.add_(1)
    with pytest.raises(ValueError, match="other weights"):
        layerwise_ru(model, x, sid, MEAN, STD, str(tmp_path), samples=2)


class _Denormalize(nn.Module):
    """The perfect decoder of the identity feature normalise(x)."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_ru_of_a_perfect_decoder_equals_sid():
    """h = normalise(x) and g = its inverse: g(h(x')) = x + sigma delta, so RU_i = log sigma_i + C."""
    net = nn.Sequential(nn.Identity(), nn.Flatten())
    features = LayerFeatures(net, {"pixels": "0"}, MEAN, STD)
    x = smooth_images(2, size=8)
    df2 = estimate_delta_f2(features, x, samples=4)
    sid = compute_sid(features, x, df2, SIDConfig(steps=50))
    ru = compute_ru(features, x, sid, {"pixels": _Denormalize()}, samples=64)
    assert ru.maps.shape == sid.maps.shape
    assert ru.per_pixel == pytest.approx(sid.per_pixel, abs=0.02)
    assert (ru.maps - sid.maps).abs().max() < 0.3
    assert ru.total == pytest.approx(3 * ru.maps.sum((-2, -1)))


# --- coherency ---------------------------------------------------------------------------------


class _Scaled(nn.Module):
    def __init__(self, decoder: nn.Module, scale: float) -> None:
        super().__init__()
        self.decoder, self.scale = decoder, scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.scale * f)


def _linear_decoders(conv2_scale: float) -> dict[str, nn.Module]:
    torch.manual_seed(1)
    out = {
        n: nn.Sequential(nn.Conv2d(c, 3, 1), nn.Upsample(size=16))
        for n, c in zip(LAYERS, (8, 16, 16), strict=True)
    }
    out["conv2"] = _Scaled(out["conv2"], conv2_scale)
    return out


def test_coherency_rescaling_keeps_sid_and_ru_but_not_gradients():
    net = small_cnn()
    x = smooth_images(2)
    inputs = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    scaled = rescale_adjacent_layers(net, "2", "5", factor=4.0, check_inputs=inputs)
    assert max_logit_change(net, scaled, inputs) < 1e-5
    assert torch.equal(net[2].weight, small_cnn()[2].weight)  # the original is untouched

    cfg = SIDConfig(steps=60)
    results = {}
    for key, model in (("before", net), ("after", scaled)):
        features = LayerFeatures(model, LAYERS, MEAN, STD)
        df2 = estimate_delta_f2(features, x, samples=8)
        sid = compute_sid(features, x, df2, cfg)
        # fixed stand-in decoders; the rescaled conv2 feature gets the adapted decoder g(4 f)
        decoders = _linear_decoders(conv2_scale=4.0 if key == "after" else 1.0)
        ru = compute_ru(features, x, sid, decoders, samples=8)
        grads = [feature_gradient_map(model, p, x, MEAN, STD).mean().item() for p in LAYERS.values()]
        results[key] = (df2, sid, ru, grads)
    (df_b, sid_b, ru_b, grad_b), (df_a, sid_a, ru_a, grad_a) = results["before"], results["after"]
    assert df_a["conv2"].value == pytest.approx(df_b["conv2"].value / 16, rel=1e-4)
    assert df_a["conv3"].value == pytest.approx(df_b["conv3"].value, rel=1e-4)
    assert torch.allclose(sid_a.per_pixel, sid_b.per_pixel, atol=1e-3)
    assert torch.allclose(sid_a.maps, sid_b.maps, atol=1e-2)
    assert torch.allclose(ru_a.per_pixel, ru_b.per_pixel, atol=1e-3)
    assert grad_a[0] == pytest.approx(grad_b[0], rel=1e-5)  # conv1 untouched
    assert grad_a[1] == pytest.approx(grad_b[1] / 4, rel=1e-4)  # conv2's gradient map shrinks 4x
    assert grad_a[2] == pytest.approx(grad_b[2], rel=1e-4)


def test_coherency_report_on_a_zoo_model_with_batchnorm_blocks():
    model = get_model("shapesnet", "none")
    x = smooth_images(1, size=64)
    report = coherency_report(model, "conv1", x, MEAN, STD, config=SIDConfig(steps=20, eval_samples=8))
    assert report["layers"] == ["conv1", "conv2"] and report["logit_change"] < 1e-4
    assert torch.allclose(report["sid_after"], report["sid_before"], atol=1e-3)
    assert report["grad_after"][0] == pytest.approx(report["grad_before"][0].item() / 4, rel=1e-3)
    assert report["grad_after"][1] == pytest.approx(report["grad_before"][1].item(), rel=1e-3)
    with pytest.raises(ValueError, match="followed by another"):
        coherency_report(model, "conv4", x, MEAN, STD)


def test_rescaling_across_a_skip_connection_is_an_error():
    model = get_model("resnet20", "none")
    inputs = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="changes the logits"):
        rescale_adjacent_layers(model.module, "layer1.0", "layer1.1", check_inputs=inputs)


# --- concentration -----------------------------------------------------------------------------


def test_concentration_outside_minus_inside():
    maps = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    maps[:, :, 2:] = 1.5  # the background discards more
    maps[1, 2] = 0.0
    out = concentration(maps, mask)
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.tensor([[1.5, 1.5, 1.5], [1.5, 1.5, 0.0]]))
    assert torch.allclose(concentration(maps[:, 0], mask.int()), torch.tensor([1.5, 1.5]))
    assert concentration(maps[:, 0], torch.zeros(2, 4, 4, dtype=torch.bool)).isnan().all()
    assert object_mask({"box_mask": mask}) is mask and object_mask({"image": maps}) is None


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_errors(tmp_path):
    model = get_model("shapesnet", "none")
    with pytest.raises(ValueError, match="unknown layer 'conv9'.*valid layers: conv1"):
        resolve_layers(model, ["conv1", "conv9"])
    with pytest.raises(ValueError, match="does not match the maps"):
        concentration(torch.zeros(2, 8, 8), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match the maps"):
        concentration(torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 and 1"):
        concentration(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space"):
        layerwise_sid(model, torch.randn(1, 3, 64, 64) * 3, MEAN, STD, config=SIDConfig(steps=1))
    with pytest.raises(ValueError, match="expects images of shape"):
        layerwise_sid(model, torch.rand(1, 3, 32, 32), MEAN, STD, config=SIDConfig(steps=1))
    with pytest.raises(ValueError, match="no module"):
        LayerFeatures(model.module, {"x": "nope"}, MEAN, STD)

    with pytest.raises(
        MissingDecoderError, match=r"layer 'conv2' of model 'shapesnet' \(looked for .*\.pt\)"
    ):
        load_decoders(tmp_path, model, ["conv2"])
    with pytest.raises(ValueError, match="unknown layer"):
        load_decoders(tmp_path, model, ["conv7"])
    x = smooth_images(1, size=64)
    sid = layerwise_sid(
        model, x, MEAN, STD, ["conv2"], SIDConfig(steps=2, eval_samples=2), delta_f2_samples=1
    )
    err_hint = MissingDecoderError.hint
    try:
        MissingDecoderError.hint = "Train it with: python train.py task=decoder model={model} layer={layer}"
        with pytest.raises(
            MissingDecoderError, match="python train.py task=decoder model=shapesnet layer=conv2"
        ):
            layerwise_ru(model, x, sid, MEAN, STD, str(tmp_path))
    finally:
        MissingDecoderError.hint = err_hint
    assert decoder_path(tmp_path, "shapesnet", "none", "conv2", (3, 64, 64)).parent == tmp_path
