"""analysis=grid and the batched grid fit: every (image, beta) at one layer in one pass equals fitting each beta alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config
from scipy import stats

from infoflow.analyses import run_analysis
from infoflow.analyses.grid import artefact_table, grid_artefact, summarise
from infoflow.errors import ConfigError
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.models import get_model
from infoflow.stats import BootstrapSettings


def _fitted(layer: str = "conv3", **kwargs) -> tuple[PerSampleIBA, torch.Tensor]:
    torch.manual_seed(0)
    model = get_model("shapesnet")
    images = torch.randn(32, *model.input_size)
    iba = PerSampleIBA(model, layer, seed=3, steps=4, copies=3, **kwargs)
    iba.fit([{"image": images[i : i + 16]} for i in range(0, 32, 16)])
    return iba, images[:3]


@pytest.mark.parametrize("batch_size", [2, 16])
def test_grid_equals_one_fit_per_beta(batch_size: int) -> None:
    iba, x = _fitted(batch_size=batch_size)
    target = torch.tensor([0, 2, 1])
    betas = [0.1, 10.0, 1000.0]
    grid = iba.explain_grid(x, target, betas)
    assert grid.heatmap.shape == (3, 3, 64, 64) and grid.prob_with.shape == (3, 3)
    for b, beta in enumerate(betas):
        iba.beta = beta
        single = iba.explain(x, target)  # image i draws seed 3 + i, as element (i, b) of the grid
        scale = float(single.heatmap.max())
        assert torch.allclose(grid.heatmap[:, b], single.heatmap, atol=1e-4 * scale), beta
        assert torch.allclose(grid.prob_with[:, b], single.prob_with, atol=1e-5)
        assert torch.allclose(grid.prob_without[:, b], single.prob_without, atol=1e-6)
    # the betas really differ: more penalty, less information
    totals = grid.total_bits
    assert (totals[:, 0] > totals[:, 2]).all()


def test_grid_without_betas_is_an_error() -> None:
    iba, x = _fitted()
    with pytest.raises(ValueError, match="beta"):
        iba.explain_grid(x, 0, [])


def test_grid_artefact_is_high_for_a_planted_grid_and_low_for_smooth_maps() -> None:
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    smooth = torch.exp(-((yy - 7) ** 2 + (xx - 9) ** 2) / 20)
    checker = ((yy + xx) % 2)  # period 2 in feature pixels
    assert grid_artefact(checker) > 0.99
    assert grid_artefact(smooth) < 0.01
    assert grid_artefact(smooth + 0.5 * checker) > 10 * grid_artefact(smooth)
    assert grid_artefact(torch.ones(8, 8)) == 0  # constant: no power anywhere but the mean


def test_grid_analysis_writes_figures_csv_and_summary(tmp_path, random_shapesnet, _isolated_cache) -> None:
    cfg = compose_config("evaluate", [
        f"paths.output_dir={tmp_path}", "logger=csv", "analysis=grid", f"weights={random_shapesnet}",
        "data.num_train=32", "data.num_test=4", "method.estimator_samples=32", "method.steps=2", "method.copies=2",
        "analysis.layers=[conv2,conv3]", "analysis.betas=[1,1000]", "analysis.num_images=2",
        "analysis.record_steps=true", "analysis.sigmas=[0,2]"])
    run_analysis(cfg)
    df = pd.read_csv(tmp_path / "grid.csv")
    assert len(df) == 2 * 2 * 2 * 2  # images x layers x sigmas x betas
    for col in ("prob_with", "prob_without", "total_bits", "mean_bits_per_pixel", "inside_outside_ratio",
                "mask_ratio", "grid_artefact"):
        assert df[col].notna().all(), col
    assert (df["mean_bits_per_pixel"] * 64 * 64 - df["total_bits"]).abs().max() < 1e-3 * df["total_bits"].max()
    artefacts = pd.read_csv(tmp_path / "grid_artefact.csv")
    assert len(artefacts) == 2 * 2 * 2 and artefacts["change"].notna().sum() == 4  # layers x betas at sigma 2
    summary = pd.read_csv(tmp_path / "grid_summary.csv")
    assert list(summary["layer"]) == ["conv2", "conv2", "conv3", "conv3"]
    tolerated = summary[summary["beta"].notna()]
    assert (tolerated["prob_change_low"] <= tolerated["prob_change"]).all()
    assert (tolerated["inside_outside_ratio_low"] <= tolerated["inside_outside_ratio_high"]).all()
    assert {p.name for p in (tmp_path / "grid").glob("*.png")} == {
        "0000_sigma0.png", "0000_sigma2.png", "0001_sigma0.png", "0001_sigma2.png", "steps_conv2.png"}


def test_grid_analysis_refuses_other_methods() -> None:
    cfg = compose_config("evaluate", ["analysis=grid", "method=saliency"])
    with pytest.raises(ConfigError, match="method must be iba"):
        run_analysis(cfg)


@pytest.mark.parametrize(("name", "layer"), [("shapesnet", "conv3"), ("shapesvit", "block1")])
def test_folded_fp32_path_equals_the_plain_fp32_fit_to_rounding(name: str, layer: str) -> None:
    torch.manual_seed(0)
    model = get_model(name)
    images = torch.randn(32, *model.input_size)
    for m in model.module.modules():  # non-trivial batch-norm statistics, so folding changes the arithmetic
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    plain = PerSampleIBA(model, layer, seed=1, steps=3, copies=2, batch_size=4)
    plain.fit([{"image": images[i : i + 16]} for i in range(0, 32, 16)])
    folded = PerSampleIBA(model, layer, seed=1, steps=3, copies=2, batch_size=4, fold_fp32=True)
    folded.bottleneck = plain.bottleneck
    assert folded.fast is not folded.split
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.fast.model.modules())
    target = torch.tensor([0, 1, 2])
    a, b = plain.explain(images[:3], target).heatmap, folded.explain(images[:3], target).heatmap
    assert torch.allclose(a, b, atol=1e-3 * float(a.max()), rtol=1e-3)


def test_the_summary_gives_the_largest_tolerated_beta_with_intervals_over_images() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for image in range(12):
        p0 = 0.9 + 0.05 * rng.random()
        for beta, drop in ((1.0, 0.01), (10.0, 0.03), (100.0, 0.3)):  # beta 100 loses more than the tolerance
            rows.append({"image": image, "layer": "conv2", "sigma": 1.0, "beta": beta, "prob_without": p0,
                         "prob_with": p0 - drop - 0.01 * rng.random(), "mean_bits_per_pixel": beta * rng.random(),
                         "inside_outside_ratio": 2 + rng.random()})
    df = pd.DataFrame(rows)
    boot = BootstrapSettings(method="t")
    row = summarise(df, 0.05, boot).iloc[0]
    at = df[df.beta == 10.0]
    drop = at.prob_with - at.prob_without
    low, high = stats.t.interval(0.95, len(at) - 1, loc=drop.mean(), scale=stats.sem(drop))  # independent
    assert row["beta"] == 10.0 and row["images"] == 12
    assert row["prob_change"] == pytest.approx(drop.mean()) and row["prob_change_low"] == pytest.approx(low)
    assert row["prob_change_high"] == pytest.approx(high) and row["prob_change_high"] < 0
    ratio = at.inside_outside_ratio
    assert row["inside_outside_ratio_low"] < ratio.mean() < row["inside_outside_ratio_high"]
    assert row["inside_outside_ratio_high"] - row["inside_outside_ratio_low"] == pytest.approx(
        2 * stats.t.ppf(0.975, 11) * stats.sem(ratio))
    assert "mask_ratio" not in row  # no masks: no column


def test_the_artefact_table_gives_the_paired_change_from_the_first_sigma() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for image in range(10):
        base = 0.05 + 0.02 * rng.random()
        for sigma, value in ((0.0, base), (2.0, base / 5 + 0.001 * rng.random())):
            rows.append({"image": image, "layer": "conv2", "beta": 10.0, "sigma": sigma, "grid_artefact": value})
    df = pd.DataFrame(rows)
    table = artefact_table(df, BootstrapSettings(method="t"))
    assert list(table["sigma"]) == [0.0, 2.0] and table["change"].isna().tolist() == [True, False]
    smooth = table.iloc[1]
    diff = df[df.sigma == 2.0].grid_artefact.to_numpy() - df[df.sigma == 0.0].grid_artefact.to_numpy()
    low, high = stats.t.interval(0.95, 9, loc=diff.mean(), scale=stats.sem(diff))
    assert smooth["change"] == pytest.approx(diff.mean()) and smooth["change_low"] == pytest.approx(low)
    assert smooth["change_high"] == pytest.approx(high) and high < 0  # smoothing removes the planted grid power
