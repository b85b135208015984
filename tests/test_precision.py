"""bf16 mixed precision: the setting, its fallback, and the accuracy bounds on the TRAINED default shapesnet.

Bounds (fp32 as reference): Per-Sample heatmap Pearson >= 0.99 per image and total bits within 2 %,
Readout heatmap Pearson >= 0.99, SID per layer within 1 % (looser here: few steps), metrics within 0.01.
Random weights amplify rounding and prove nothing, so these use the trained default weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from infoflow.attribution import METHODS
from infoflow.builders import build_method, build_trainer
from infoflow.cli.plugins import name_plugins
from infoflow.data.shapes import ShapesDataModule, box_to_mask, render_split
from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2, resolve_layers
from infoflow.errors import ConfigError
from infoflow.iba.estimator import Estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.readout import ReadoutBottleneck, ReadoutIBA, fit_statistics
from infoflow.metrics.bbox import BoundingBoxRatio
from infoflow.metrics.degradation import Degradation
from infoflow.metrics.sensitivity import SensitivityN
from infoflow.models import get_model
from infoflow.models.zoo import ZooModel
from infoflow.tasks.readout import ReadoutModule
from infoflow.utils import precision as P
from infoflow.utils.fold import fold_batchnorm

needs_bf16 = pytest.mark.skipif(not P.is_supported("bf16", "cpu"), reason="this CPU has no native bf16")


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) Pearson correlation of rows of a and b (N, ...)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.fixture(scope="module")
def trained() -> ZooModel:
    return get_model("shapesnet", weights="default")


@pytest.fixture(scope="module")
def shapes() -> dict[str, torch.Tensor]:
    """8 test images of the shapes data: ``x01`` in [0, 1], ``x`` normalised, ``label``, ``mask``, ``box``."""
    data = render_split("test", 8, 64, 4, seed=0)
    x01 = data["image"].float() / 255
    return {**data, "x01": x01, "x": ShapesDataModule.normalize(x01)}


# --- the setting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "canonical"), [
    (32, "32"), ("32", "32"), ("32-true", "32"), ("bf16", "bf16"), ("bf16-mixed", "bf16"), ("16-mixed", "16-mixed"),
])
def test_parse_precision(value: object, canonical: str) -> None:
    assert P.parse_precision(value) == canonical


@pytest.mark.parametrize("value", ["64", "int8", 16.5, None, True, "bf32"])
def test_unknown_precision_lists_valid_ones(value: object) -> None:
    with pytest.raises(ConfigError, match=r"unknown precision .*valid: 32, bf16, 16-mixed"):
        P.parse_precision(value)


def test_unsupported_bf16_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "is_supported", lambda precision, device=None: precision == "32")
    monkeypatch.setattr(P, "_warned", set())
    with pytest.warns(P.PrecisionFallbackWarning, match="precision=bf16 is not supported on this cpu"):
        assert P.resolve_precision("bf16", "cpu") == "32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("bf16-mixed", "cpu") == "32"  # one warning per process, not per call
    assert P.lightning_precision("bf16", "cpu") == "32-true"


def test_fp16_on_cpu_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_warned", set())
    with pytest.warns(P.PrecisionFallbackWarning):
        assert P.resolve_precision("16-mixed", "cpu") == "32"


def test_method_falls_back_when_unsupported(trained: ZooModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "is_supported", lambda precision, device=None: precision == "32")
    monkeypatch.setattr(P, "_warned", set())
    with pytest.warns(P.PrecisionFallbackWarning):
        iba = PerSampleIBA(trained, "conv3", precision="bf16")
    assert iba.precision == "32"
    with pytest.raises(ConfigError, match="valid: 32, bf16, 16-mixed"):
        PerSampleIBA(trained, "conv3", precision="half")


@needs_bf16
def test_autocast_runs_convs_in_bf16_and_full_precision_switches_it_off() -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with P.autocast("bf16", "cpu"):
        assert conv(x).dtype == torch.bfloat16
        with P.full_precision("cpu"):
            assert conv(x).dtype == torch.float32
    with P.autocast("32", "cpu"):
        assert conv(x).dtype == torch.float32


# --- accuracy bounds on the trained default shapesnet ---------------------------------------------------


def _estimator(iba: PerSampleIBA, x: torch.Tensor) -> Estimator:
    with torch.no_grad():
        feature = iba.split.head(x)
    est = Estimator(tuple(feature.shape[1:]))
    est.update(feature)
    return est


def check_per_sample_bounds(model: ZooModel, layer: str, data: dict[str, torch.Tensor], size: int) -> None:
    """Per-Sample heatmaps with bf16 network passes: Pearson >= 0.99 and total bits within 2 % per image,
    bbox ratio within 0.01 of fp32 (same seed, estimator on 64 training images)."""
    x, y, boxes = data["x"][:4], data["label"][:4], box_to_mask(data["box"][:4], size, size)
    train = ShapesDataModule.normalize(render_split("train", 64, size, 4, seed=0)["image"].float() / 255)
    results = {}
    for precision in ("32", "bf16"):
        iba = PerSampleIBA(model, layer, seed=0, steps=5, copies=5, precision=precision)
        iba.set_estimator(_estimator(iba, train))
        results[precision] = iba.explain(x, y)
    ref, low = results["32"], results["bf16"]
    assert low.heatmap.dtype == torch.float32 and low.capacity.dtype == torch.float32
    assert (pearson(ref.heatmap, low.heatmap) >= 0.99).all()
    assert ((low.total_bits - ref.total_bits).abs() <= 0.02 * ref.total_bits.abs()).all()
    assert not torch.equal(ref.heatmap, low.heatmap)  # bf16 really ran
    ratios = []
    for result in (ref, low):
        metric = BoundingBoxRatio(max_box_fraction=1.0)
        metric.update(result.heatmap, boxes)
        ratios.append(float(metric.compute()))
    assert abs(ratios[0] - ratios[1]) <= 0.01


def check_metric_bounds(model: ZooModel, data: dict[str, torch.Tensor], size: int, tile: int) -> None:
    """Degradation area and Sensitivity-n with bf16 perturbation passes within 0.01 of fp32."""
    x, y = data["x"][:4], data["label"][:4]
    maps = data["mask"][:4].float() + 0.1 * torch.rand(4, size, size, generator=torch.Generator().manual_seed(0))
    out = {}
    for precision in ("32", "bf16"):
        degradation = Degradation(model.module.eval(), (size, size), tile_size=tile, num_points=17,
                                  precision=precision)
        degradation.update(x, y, maps)
        sensitivity = SensitivityN(model.module, (size, size), tile_size=tile, num_n=4, num_subsets=16,
                                   precision=precision)
        sensitivity.update(x, y, maps)
        out[precision] = (degradation.compute().score, sensitivity.compute().correlation)
    assert degradation.precision == "bf16"
    assert abs(float(out["32"][0] - out["bf16"][0])) <= 0.01
    assert (out["32"][1] - out["bf16"][1]).abs().max() <= 0.01


def check_sid_bounds(model: ZooModel, layers: list[str], x01: torch.Tensor) -> None:
    """SID per layer with bf16 network passes: the layer's SID (nats per pixel) within 1 % of fp32, the
    constraint still met on fresh draws."""
    features = LayerFeatures(model.module, resolve_layers(model, layers), ShapesDataModule.mean,
                             ShapesDataModule.std)
    df2 = estimate_delta_f2(features, x01[:2], samples=4)
    cfg = SIDConfig(steps=10, samples=2, eval_samples=32, max_eval_samples=256, tol=0.1)
    results = {}
    for precision in ("32", "bf16"):
        features.precision = precision
        results[precision] = compute_sid(features, x01[:1], df2, cfg)
    ref, low = results["32"], results["bf16"]
    assert low.converged.all() and ref.converged.all()
    assert ((low.ratio_fresh - 1).abs() <= cfg.tol).all()
    relative = ((low.per_pixel - ref.per_pixel) / ref.per_pixel).abs()  # (N, L)
    assert (relative <= 0.01).all(), relative


@needs_bf16
@pytest.mark.parametrize("layer", [pytest.param("conv2", marks=pytest.mark.slow), "conv3"])
def test_per_sample_bf16_bounds(trained: ZooModel, shapes: dict[str, torch.Tensor], layer: str) -> None:
    check_per_sample_bounds(trained, layer, shapes, 64)


@needs_bf16
def test_metrics_bf16_bounds(trained: ZooModel, shapes: dict[str, torch.Tensor]) -> None:
    check_metric_bounds(trained, shapes, 64, tile=8)


@needs_bf16
def test_sid_bf16_bounds(trained: ZooModel, shapes: dict[str, torch.Tensor]) -> None:
    check_sid_bounds(trained, ["conv2", "conv4"], shapes["x01"])


@needs_bf16
@pytest.mark.slow
def test_bf16_bounds_on_a_trained_resnet18_at_128px() -> None:
    """The same bounds on a larger trained network: torchvision's ResNet-18 trained on 128x128 shapes
    (``weights=default``, trained on first use and cached; minutes on two cores)."""
    model = get_model("resnet18", weights="default", num_classes=4, input_size=(3, 128, 128))
    data = render_split("test", 8, 128, 4, seed=0)
    data["x01"] = data["image"].float() / 255
    data["x"] = ShapesDataModule.normalize(data["x01"])
    assert (model.module(data["x"]).argmax(1) == data["label"]).float().mean() >= 0.75  # really trained
    check_per_sample_bounds(model, "conv3_2", data, 128)
    check_metric_bounds(model, data, 128, tile=16)
    check_sid_bounds(model, ["conv2_2", "conv4_2"], data["x01"])


# --- Readout: inference and Lightning bf16-mixed training -----------------------------------------------


@needs_bf16
def test_readout_bf16_training_and_inference_bounds(trained: ZooModel, shapes: dict[str, torch.Tensor],
                                                    tmp_path: Path) -> None:
    """A readout trained with Lightning's bf16-mixed keeps fp32 bottleneck quantities, and its heatmaps with
    bf16 network passes correlate >= 0.99 with fp32 ones."""
    dm = ShapesDataModule(image_size=64, num_train=32, num_val=16, num_test=16, batch_size=16)
    dm.setup("fit")
    torch.manual_seed(0)
    readout = ReadoutBottleneck(trained, "conv3", ["conv2", "conv3", "conv4", "fc"])
    readout.set_statistics(fit_statistics(readout, dm.train_dataloader(), 32))
    data = {"_target_": "infoflow.data.shapes.ShapesDataModule", "image_size": 64, "seed": 0}
    module = ReadoutModule(readout, beta=10.0, lr=1e-2, meta=readout.meta(data), output_dir=tmp_path)
    before = [p.detach().clone() for p in readout.net.parameters()]
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                         precision=P.lightning_precision("bf16", "cpu"))
    trainer.fit(module, datamodule=dm)
    assert trainer.precision == "bf16-mixed"
    assert all(not torch.equal(a, b) for a, b in zip(before, readout.net.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in readout.net.parameters())
    with P.autocast("bf16", "cpu"):  # as inside a bf16-mixed training step
        out = readout(shapes["x"][:2])
    assert out.capacity.dtype == out.lam.dtype == out.noisy_logits.dtype == torch.float32
    maps = {p: ReadoutIBA(readout.eval(), precision=p).attribute(shapes["x"], shapes["label"]) for p in ("32", "bf16")}
    assert (pearson(maps["32"], maps["bf16"]) >= 0.99).all()
    assert not torch.equal(maps["32"], maps["bf16"])


def test_train_config_precision_reaches_the_lightning_trainer(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["precision=bf16", "logger=[]", "callbacks=none",
                                          f"paths.output_dir={tmp_path}"])
    expected = "bf16-mixed" if P.is_supported("bf16", "cpu") else "32-true"
    assert build_trainer(cfg).precision == expected
    assert build_trainer(cfg, precision="32-true").precision == "32-true"
    cfg.precision = "fp8"
    with pytest.raises(ConfigError, match="valid: 32, bf16, 16-mixed"):
        build_trainer(cfg)


# --- SID -------------------------------------------------------------------------------------------------


def test_sid_schedules_chunk_the_elements() -> None:
    elements = [(i, name) for name in ("a", "b") for i in range(3)]
    per_layer = SIDConfig(samples=2, max_rows=8, schedule="per-layer")
    assert per_layer.chunks(elements, torch.device("cpu")) == [elements[:3], elements[3:]]
    batched = SIDConfig(samples=2, max_rows=8, schedule="batched")
    assert batched.chunks(elements, torch.device("cpu")) == [elements[:4], elements[4:]]
    for device in ("cpu", "cuda"):
        assert SIDConfig(samples=2, max_rows=8).chunks(elements, torch.device(device)) == [elements[:4], elements[4:]]
    with pytest.raises(ConfigError, match="valid: batched, per-layer"):
        SIDConfig(schedule="fast")


# --- baselines ------------------------------------------------------------------------------------------


@needs_bf16
def test_baselines_bf16_and_the_methods_that_refuse_it(trained: ZooModel, shapes: dict[str, torch.Tensor]) -> None:
    x, y = shapes["x"][:4], shapes["label"][:4]
    ref = METHODS.get("gradcam")(trained).attribute(x, y)
    low = METHODS.get("gradcam")(trained).set_precision("bf16")
    assert low.precision == "bf16"
    maps = low.attribute(x, y)
    assert maps.dtype == torch.float32 and not torch.equal(maps, ref)
    assert (pearson(ref, maps) >= 0.99).all()
    for name in ("lrp-a1b0", "pattern-attribution"):
        method = METHODS.get(name)(trained)
        assert not method.supports_bf16
        with pytest.warns(P.PrecisionFallbackWarning, match="not valid in reduced precision"):
            method.set_precision("bf16")
        assert method.precision == "32"


def test_evaluate_config_precision_reaches_the_methods(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["precision=bf16", "method=gradient", f"paths.output_dir={tmp_path}"],
                      return_hydra_config=True)
        name_plugins(cfg, cfg.hydra.runtime.choices)
    expected = "bf16" if P.is_supported("bf16", "cpu") else "32"
    assert build_method(cfg, get_model("shapesnet", "none", 4, (3, 64, 64))).precision == expected
    cfg.precision = "fp8"
    with pytest.raises(ConfigError, match="valid: 32, bf16, 16-mixed"):
        build_method(cfg, get_model("shapesnet", "none", 4, (3, 64, 64)))


# --- the prepared network -------------------------------------------------------------------------------


def test_fold_batchnorm_equals_the_network_and_leaves_it_unchanged(trained: ZooModel) -> None:
    x = torch.randn(3, 3, 64, 64)
    before = {k: v.clone() for k, v in trained.module.state_dict().items()}
    folded = fold_batchnorm(trained.module, x[:1])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trained.module.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), trained.module(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, trained.module.state_dict()[k]) for k, v in before.items())


def test_prepared_network_is_bf16_channels_last_and_fp32_is_the_network_itself(trained: ZooModel) -> None:
    example = torch.zeros(1, 3, 64, 64)
    assert P.prepare_network(trained.module, "32", example) is trained.module
    net = P.prepare_network(trained.module, "bf16", example)
    weights = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.dtype == torch.bfloat16 and not w.requires_grad for w in weights)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights if w.shape[-1] > 1)
