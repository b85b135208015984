"""Quantus and Captum interop: infoflow's methods inside both tools, and cross-checks where infoflow and
Quantus define the same quantity (on the same maps, images and model)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from infoflow.data.shapes import ShapesDataModule
from infoflow.errors import ConfigError, InputError
from infoflow.iba.estimator import fit_estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.readout import ReadoutBottleneck, ReadoutIBA, fit_statistics
from infoflow.interop.captum import IBAAttribution, PerSampleIBAAttribution, ReadoutIBAAttribution
from infoflow.interop.quantus import explain_func, ssim_similarity
from infoflow.metrics import BoundingBoxRatio, MaskRatio, SanitySSIM, gini
from infoflow.metrics.degradation import degradation_curves
from infoflow.metrics.tiles import TileGrid
from infoflow.models import get_model
from infoflow.models.zoo import ZooModel

quantus = pytest.importorskip("quantus")
SIZE = 32


@pytest.fixture(scope="module")
def dm() -> ShapesDataModule:
    dm = ShapesDataModule(image_size=SIZE, num_train=32, num_val=8, num_test=8, batch_size=16, augment=False)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def zoo() -> ZooModel:
    torch.manual_seed(0)
    return get_model("shapesnet", "none", 4, (3, SIZE, SIZE))


@pytest.fixture(scope="module")
def batch(dm: ShapesDataModule) -> dict[str, torch.Tensor]:
    return next(iter(dm.val_dataloader()))


@pytest.fixture(scope="module")
def iba(zoo: ZooModel, dm: ShapesDataModule) -> PerSampleIBA:
    return PerSampleIBA(zoo, "conv3", steps=3, copies=2, seed=0, estimator_samples=32).fit(dm.train_dataloader())


@pytest.fixture(scope="module")
def readout(zoo: ZooModel, dm: ShapesDataModule) -> ReadoutIBA:
    torch.manual_seed(0)
    bottleneck = ReadoutBottleneck(zoo, "conv3", ["conv2", "conv3", "fc"])
    bottleneck.set_statistics(fit_statistics(bottleneck, dm.train_dataloader(), 32))
    return ReadoutIBA(bottleneck)


def small_cnn(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    ).eval()


# ---------------------------------------------------------------- Quantus: explain_func


def test_explain_func_follows_the_quantus_convention(zoo: ZooModel, dm: ShapesDataModule, iba: PerSampleIBA,
                                                      batch: dict[str, torch.Tensor]) -> None:
    x, y = batch["image"][:3], batch["label"][:3]
    estimator = fit_estimator(iba.split.head, dm.train_dataloader(), 32)
    out = explain_func(zoo.module, x.numpy(), y.numpy(), method="iba", zoo=zoo, layer="conv3", steps=3, copies=2,
                       seed=0, estimator=estimator, device="cpu")
    assert isinstance(out, np.ndarray) and out.shape == (3, 1, SIZE, SIZE) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], iba.attribute(x, y).numpy(), rtol=1e-5, atol=1e-6)
    # a ready method and a non-IBA method by name; a bare nn.Module without zoo metadata
    np.testing.assert_array_equal(explain_func(zoo.module, x.numpy(), y.numpy(), method=iba)[:, 0],
                                  iba.attribute(x, y).numpy())
    assert explain_func(small_cnn(), np.random.rand(2, 3, 8, 8), np.array([0, 2]), method="saliency").shape == (
        2, 1, 8, 8)
    with pytest.raises(InputError, match="integer"):
        explain_func(zoo.module, x.numpy(), y.numpy().astype(float), method=iba)
    with pytest.raises(ConfigError, match="method"):
        explain_func(zoo.module, x.numpy(), y.numpy(), method="no-such-method", zoo=zoo)


def test_missing_quantus_names_the_extra(monkeypatch: pytest.MonkeyPatch, zoo: ZooModel) -> None:
    monkeypatch.setitem(sys.modules, "quantus", None)  # makes `import quantus` fail
    with pytest.raises(ConfigError, match=r"pip install 'infoflow\[quantus\]'"):
        explain_func(zoo.module, np.zeros((1, 3, SIZE, SIZE), np.float32), np.array([0]), method="saliency")


def test_quantus_metrics_run_on_infoflow_iba_and_readout(zoo: ZooModel, iba: PerSampleIBA, readout: ReadoutIBA,
                                                        batch: dict[str, torch.Tensor]) -> None:
    """Quantus's RelevanceRankAccuracy, Sparseness and PointingGame on Per-Sample and Readout IBA; the first two
    agree with infoflow's MaskRatio and Gini index on the same maps."""
    x, y, mask = batch["image"][:4], batch["label"][:4], batch["mask"][:4]
    s = mask[:, None].numpy().astype(np.float32)
    for method in (iba, readout):
        kwargs = {"model": zoo.module, "x_batch": x.numpy(), "y_batch": y.numpy(), "s_batch": s,
                  "explain_func": explain_func, "explain_func_kwargs": {"method": method}}
        rra = quantus.RelevanceRankAccuracy(disable_warnings=True, display_progressbar=False)(**kwargs)
        sparse = quantus.Sparseness(disable_warnings=True, display_progressbar=False)(**kwargs)
        hits = quantus.PointingGame(disable_warnings=True, display_progressbar=False)(**kwargs)
        maps = method.attribute(x, y)
        ratio = MaskRatio()
        ratio.update(maps, mask)
        assert np.mean(rra) == pytest.approx(ratio.compute().item(), abs=1e-12)
        np.testing.assert_allclose(sparse, gini(maps).numpy(), atol=1e-5)
        assert len(hits) == 4 and set(hits) <= {True, False}


# ---------------------------------------------------------------- cross-checks


def test_bbox_ratio_equals_relevance_rank_accuracy(batch: dict[str, torch.Tensor]) -> None:
    maps = torch.rand(8, SIZE, SIZE, generator=torch.Generator().manual_seed(0))  # no ties
    box = batch["box_mask"]
    ours = BoundingBoxRatio(max_box_fraction=1.0)
    ours.update(maps, box)
    theirs = quantus.RelevanceRankAccuracy(disable_warnings=True, display_progressbar=False)(
        model=None, x_batch=batch["image"].numpy(), y_batch=batch["label"].numpy(), a_batch=maps[:, None].numpy(),
        s_batch=box[:, None].numpy().astype(np.float32))
    assert ours.compute().item() == pytest.approx(float(np.mean(theirs)), abs=1e-12)


@pytest.mark.parametrize("tile", [4, 5])
def test_degradation_equals_region_perturbation(tile: int) -> None:
    """Same baseline value (images centred per channel, so infoflow's per-channel mean is 0 = Quantus's
    perturb_baseline=0.0), same tiles (equal areas: Quantus ranks tile sums, infoflow tile means), no ties:
    Quantus's drops p(x) - p(x after k tiles) equal infoflow's MoRF and LeRF curves to 1e-5."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 20, 20, generator=g)
    x = x - x.mean(dim=(2, 3), keepdim=True)
    maps = torch.rand(3, 20, 20, generator=g)
    model = small_cnn()
    with torch.no_grad():
        y = model(x).argmax(1)
    grid = TileGrid(20, 20, tile)
    steps = torch.arange(grid.num_tiles + 1)
    curves, _ = degradation_curves(model, x, y, maps, grid, steps, batch_size=64)
    for k, order in enumerate(("morf", "lerf")):
        metric = quantus.RegionPerturbation(patch_size=tile, order=order, regions_evaluation=grid.num_tiles,
                                            perturb_baseline=0.0, disable_warnings=True, display_progressbar=False)
        theirs = np.array(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(),
                                 softmax=True))
        ours = (curves[k][:, :1] - curves[k][:, 1:]).numpy()
        assert theirs.shape == ours.shape == (3, grid.num_tiles)
        np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_sanity_ssim_equals_mprt_with_the_same_ssim() -> None:
    """MPRT with infoflow's SSIM as similarity_func scores the same map pairs as SanitySSIM, layer by layer."""
    model = small_cnn()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    kwargs = {"method": "saliency"}
    scores = quantus.MPRT(similarity_func=ssim_similarity(12, 12), layer_order="top_down", seed=7, normalise=False,
                          abs=False, disable_warnings=True, display_progressbar=False)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=explain_func, explain_func_kwargs=kwargs)
    assert scores["original"] == pytest.approx([1.0] * 4)
    layers = [name for name in scores if name != "original"]
    ours = SanitySSIM(layers)
    original = torch.from_numpy(explain_func(model, x.numpy(), y.numpy(), **kwargs)[:, 0])
    generator = quantus.helpers.model.pytorch_model.PyTorchModel(model).get_random_layer_generator("top_down", 7)
    for step, (name, randomized) in enumerate(generator):
        assert name == layers[step]
        ours.update(original, torch.from_numpy(explain_func(randomized, x.numpy(), y.numpy(), **kwargs)[:, 0]), step)
    np.testing.assert_allclose(ours.compute().numpy(), [np.mean(scores[name]) for name in layers], atol=1e-12)


# ---------------------------------------------------------------- Captum


def test_captum_attribution_for_per_sample_and_readout(zoo: ZooModel, iba: PerSampleIBA, readout: ReadoutIBA,
                                                       batch: dict[str, torch.Tensor]) -> None:
    from captum.attr import Attribution
    from captum.metrics import infidelity, sensitivity_max

    x, y = batch["image"][:2], batch["label"][:2]

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.1 * torch.randn_like(inputs)
        return noise, inputs - noise

    for wrapped, method in ((PerSampleIBAAttribution(iba), iba), (ReadoutIBAAttribution(readout), readout)):
        assert isinstance(wrapped, Attribution) and not wrapped.has_convergence_delta()
        attr = wrapped.attribute(x, target=y)
        assert attr.shape == x.shape
        torch.testing.assert_close(attr[:, 1], method.attribute(x, y))
        torch.manual_seed(0)
        inf = infidelity(zoo.module, perturb, x, attr.detach(), target=y, n_perturb_samples=2)
        sens = sensitivity_max(wrapped.attribute, x, target=y, n_perturb_samples=2)
        assert inf.shape == (2,) and torch.isfinite(inf).all() and (inf >= 0).all()
        assert sens.shape == (2,) and torch.isfinite(sens).all() and (sens >= 0).all()
    with torch.no_grad():
        predicted = zoo.module(x).argmax(1)
    torch.testing.assert_close(IBAAttribution(readout, expand_channels=False).attribute(x)[:, 0],
                               readout.attribute(x, predicted))
    with pytest.raises(InputError):
        PerSampleIBAAttribution(readout)  # type: ignore[arg-type]
