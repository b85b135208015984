"""task=decoder, analysis=layerwise and analysis=coherency: end to end on tiny data, and their errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_config, run_script
from fake_layouts import make_cifar10, make_cub

from infoflow.analyses import run_analysis
from infoflow.analyses.layerwise import layer_rows
from infoflow.data.shapes import ShapesDataModule
from infoflow.discarding import (
    MissingDecoderError,
    SIDConfig,
    SIDResult,
    concentration,
    layerwise_ru,
    layerwise_sid,
)
from infoflow.models.zoo import get_model

TINY_SHAPES = ["data.num_train=64", "data.num_val=32", "data.num_test=16", "data.image_size=32",
               "data.batch_size=32"]
QUICK = ["analysis.num_images=2", "analysis.num_maps=2", "analysis.delta_f2.images=2",
         "analysis.delta_f2.samples=4", "analysis.sid.steps=8", "analysis.sid.eval_samples=8",
         "analysis.sid.tol=0.5"]


def _fake_sid(layers: list[str], size: int) -> SIDResult:
    n, layer_count = 1, len(layers)
    log_sigma = torch.zeros(n, layer_count, size, size)
    ones = torch.ones(n, layer_count)
    return SIDResult(layers, log_sigma, ones, ones, ones * 0, ones, ones * 0, ones * 64, ones[0], 3, 0.05)


def _evaluate(tmp_path: Path, *overrides: str) -> dict:
    """Run an analysis in-process with the composed evaluate config, output under `tmp_path`."""
    cfg = compose_config("evaluate", [f"paths.output_dir={tmp_path}", "logger=csv", *overrides])
    return run_analysis(cfg)


def test_decoder_task_then_layerwise_analysis_with_ru(tmp_path, random_shapesnet, _isolated_cache):
    common = [f"weights={random_shapesnet}", *TINY_SHAPES]
    out = run_script("train.py", "-m", "task=decoder", "layer=conv1,conv2", "trainer.max_epochs=1",
                     "callbacks=none", "logger=csv", f"hydra.sweep.dir={tmp_path / 'multi'}", *common)
    assert out.count("decoder of shapesnet/") == 2
    decoders = sorted(p.name for p in (_isolated_cache / "decoders").glob("*.pt"))
    assert [n.split("-")[1] for n in decoders] == ["conv1", "conv2"]

    run_dir = tmp_path / "run"
    out = run_script("evaluate.py", "analysis=layerwise", "analysis.layers=[conv1,conv2]", "analysis.ru=true",
                     "analysis.ru_samples=4", f"hydra.run.dir={run_dir}", *common, *QUICK)
    assert "| shapesnet | 2 | conv2 |" in out and out.strip().endswith(str(run_dir))
    rows = pd.read_csv(run_dir / "layerwise.csv")
    assert len(rows) == 2 * 2 and rows["ru_per_pixel"].notna().all() and rows["concentration"].notna().all()
    summary = pd.read_csv(run_dir / "layerwise_summary.csv")
    assert list(summary["layer"]) == ["conv1", "conv2"]
    for name in ("sid_curves", "ru_curves", "concentration_curves", "sid_maps_shapesnet", "ru_maps_shapesnet"):
        assert (run_dir / "layerwise" / f"{name}.png").stat().st_size > 0
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_missing_decoder_is_an_error_naming_the_command(tmp_path, random_shapesnet):
    model = get_model("shapesnet", str(random_shapesnet), num_classes=4, input_size=(3, 32, 32))
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(MissingDecoderError, match="python train.py task=decoder model=shapesnet layer=conv3"):
        layerwise_ru(model, images, _fake_sid(["conv3"], 32), (0.5,) * 3, (0.25,) * 3, str(tmp_path))
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        layerwise_ru(model, images, _fake_sid(["conv9"], 32), (0.5,) * 3, (0.25,) * 3, str(tmp_path))


def test_masks_not_matching_the_image_size_are_an_error():
    sid = _fake_sid(["conv1"], 8)
    with pytest.raises(ValueError, match=r"mask of shape \(1, 4, 4\) does not match"):
        layer_rows("m", sid, None, torch.ones(1, 4, 4, dtype=torch.bool), torch.zeros(1))


def test_layerwise_on_cub_and_cifar(tmp_path, capsys):
    cub = make_cub(tmp_path / "cub")
    summary = _evaluate(tmp_path / "cub_run", "analysis=layerwise", "data=cub", f"data.root={cub}",
                        "data.image_size=32", "weights=none", "analysis.layers=[conv2,conv4]", *QUICK)
    assert {"shapesnet/conv4/sid_per_pixel", "shapesnet/conv4/concentration"} <= summary.keys()
    cifar = make_cifar10(tmp_path / "cifar")
    summary = _evaluate(tmp_path / "cifar_run", "analysis=layerwise", "data=cifar10", f"data.root={cifar}",
                        "weights=none", "analysis.layers=[conv4]", *QUICK)
    assert "concentration: not available" in capsys.readouterr().out
    assert "shapesnet/conv4/sid_per_pixel" in summary and "shapesnet/conv4/concentration" not in summary
    assert pd.read_csv(tmp_path / "cifar_run" / "layerwise.csv")["concentration"].isna().all()


def test_coherency_analysis_prints_sid_unchanged_and_gradients_changed(tmp_path, capsys):
    summary = _evaluate(tmp_path, "analysis=coherency", "weights=none", *TINY_SHAPES, "analysis.num_images=1",
                        "analysis.delta_f2_samples=8", "analysis.sid.steps=40")
    out = capsys.readouterr().out
    assert "SID changes by at most" in out and (tmp_path / "coherency.csv").is_file()
    assert summary["logit_change"] < 1e-4
    assert summary["max_abs_sid_change"] < 0.05
    assert summary["max_abs_grad_change"] == pytest.approx(0.75, abs=0.01)  # the 1/4 layer's gradients


@pytest.mark.slow
def test_trained_shapes_default_concentrates_discarding_on_the_background():
    """On the trained default shapesnet the last conv layer discards the background more: concentration > 0."""
    dm = ShapesDataModule(num_classes=4, num_test=16)
    model = get_model("shapesnet", "default", num_classes=4, input_size=dm.input_size)  # trained on first use
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    images01 = dm.denormalize(batch["image"][:4])
    last = model.conv_layers()[-1]
    sid = layerwise_sid(model, images01, dm.mean, dm.std, [last], SIDConfig(steps=100, eval_samples=32))
    assert concentration(sid.maps, batch["mask"][:4]).mean() > 0


def test_layerwise_reports_both_constraint_ratios_and_a_shared_colour_scale(tmp_path, capsys, monkeypatch):
    """CSV, markdown, printed table and summary carry the in-sample and the fresh constraint ratio; the SID
    map grid has one colour scale over all its panels and one colour bar labelled in nats per pixel."""
    import infoflow.viz as viz

    figures = {}
    save = viz.save_figure

    def capture(fig, path, provenance=""):
        maps = [im for ax in fig.axes for im in ax.images if im.get_array().ndim == 2]
        labels = [ax.get_ylabel() or ax.get_xlabel() for ax in fig.axes  # the colour bar, either orientation
                  if not ax.images and (ax.get_ylabel() or ax.get_xlabel())]
        figures[Path(path).name] = ([im.get_clim() for im in maps], [im.get_array() for im in maps], labels)
        return save(fig, path, provenance)

    monkeypatch.setattr(viz, "save_figure", capture)
    summary = _evaluate(tmp_path, "analysis=layerwise", "weights=none", *TINY_SHAPES,
                        "analysis.layers=[conv1,conv2]", "analysis.ru=false", *QUICK)
    out = capsys.readouterr().out
    assert "constraint_ratio_fresh" in out
    rows = pd.read_csv(tmp_path / "layerwise.csv")
    for col in ("constraint_ratio", "constraint_ratio_se", "constraint_ratio_fresh", "constraint_ratio_fresh_se"):
        assert rows[col].notna().all() and (rows[col] > 0).all(), col
    assert (rows["converged"] == ((rows["constraint_ratio_fresh"] - 1).abs() <= 0.5)).all()
    table = pd.read_csv(tmp_path / "layerwise_summary.csv")
    fresh = rows.groupby("layer")["constraint_ratio_fresh"]
    assert table.set_index("layer")["constraint_ratio_fresh_min"].to_dict() == pytest.approx(fresh.min().to_dict())
    assert table.set_index("layer")["constraint_ratio_fresh_max"].to_dict() == pytest.approx(fresh.max().to_dict())
    assert "constraint_ratio_fresh" in (tmp_path / "layerwise_summary.md").read_text()
    assert summary["shapesnet/conv2/constraint_ratio_fresh"] == pytest.approx(fresh.mean()["conv2"])

    clims, arrays, labels = figures["sid_maps_shapesnet.png"]
    assert len(clims) == 2 * 2 and len(set(clims)) == 1  # 2 images x 2 layers, one scale
    low = min(float(a.min()) for a in arrays)
    high = max(float(a.max()) for a in arrays)
    assert clims[0] == pytest.approx((low, high))
    assert labels == ["SID [nats/pixel]"]


def _synthetic_rows(n_images: int, seed: int = 0) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for model, shift in (("a", 0.0), ("b", 0.3)):
        for i in range(n_images):
            base = rng.normal(0, 1)  # per-image difficulty, shared by the models
            for j, layer in enumerate(["conv1", "conv2"]):
                rows.append({"model": model, "image": i, "layer": layer, "layer_index": j + 1,
                             "sid_per_pixel": base + shift * (j + 1) + 0.01 * j,
                             "ru_per_pixel": float("nan"), "concentration": base,
                             "constraint_ratio_fresh": 1.0 + 0.01 * i})
    # the same per-image base for both models: draw once, copy
    df = pd.DataFrame(rows)
    a = df[df.model == "a"].reset_index(drop=True)
    b = df[df.model == "b"].reset_index(drop=True)
    b["sid_per_pixel"] = a["sid_per_pixel"] + 0.3 * b["layer_index"] + rng.normal(0, 0.05, len(b))
    b["concentration"] = a["concentration"]
    return pd.concat([a, b], ignore_index=True)


def test_summary_intervals_contain_the_mean_and_shrink_with_more_images():
    from infoflow.layer_report import summarize
    from infoflow.stats import BootstrapSettings, mean_interval

    boot = BootstrapSettings(n_resamples=2000)
    few, many = summarize(_synthetic_rows(8), boot), summarize(_synthetic_rows(128), boot)
    for table in (few, many):
        assert (table["sid_per_pixel_low"] <= table["sid_per_pixel"]).all()
        assert (table["sid_per_pixel"] <= table["sid_per_pixel_high"]).all()
        assert table["ru_per_pixel"].isna().all() and table["ru_per_pixel_low"].isna().all()
    width = lambda t: (t["sid_per_pixel_high"] - t["sid_per_pixel_low"]).to_numpy()  # noqa: E731
    assert (width(many) < 0.5 * width(few)).all()  # ~ 1/sqrt(n): 4x fewer would be sqrt(16) = 4
    df = _synthetic_rows(8)
    cell = df[(df.model == "a") & (df.layer == "conv2")]["sid_per_pixel"].to_numpy()
    row = few[(few.model == "a") & (few.layer == "conv2")].iloc[0]
    iv = mean_interval(cell, n_resamples=2000)
    assert (row["sid_per_pixel"], row["sid_per_pixel_low"], row["sid_per_pixel_high"]) == (iv.estimate, iv.low, iv.high)
    assert row["images"] == 8 and row["constraint_ratio_fresh_max"] == pytest.approx(1.07)


def test_paired_difference_is_the_bootstrap_of_per_image_differences_and_narrower_than_unpaired():
    from infoflow.layer_report import paired_differences, summarize
    from infoflow.stats import BootstrapSettings, mean_interval

    boot = BootstrapSettings(n_resamples=2000, seed=3)
    df = _synthetic_rows(16)
    diffs = paired_differences(df, boot)
    assert list(diffs["model"]) == ["b", "b"] and set(diffs["reference"]) == {"a"}
    for layer in ("conv1", "conv2"):
        a = df[(df.model == "a") & (df.layer == layer)].sort_values("image")["sid_per_pixel"].to_numpy()
        b = df[(df.model == "b") & (df.layer == layer)].sort_values("image")["sid_per_pixel"].to_numpy()
        iv = mean_interval(b - a, n_resamples=2000, seed=3)
        row = diffs[diffs.layer == layer].iloc[0]
        assert (row["sid_per_pixel_diff"], row["sid_per_pixel_diff_low"], row["sid_per_pixel_diff_high"]) == \
            pytest.approx((iv.estimate, iv.low, iv.high))
        assert row["sid_per_pixel_diff_low"] > 0  # the planted shift, found despite the image spread
        # the same concentration in both models: an exact zero difference
        assert row["concentration_diff"] == 0 and row["concentration_diff_low"] == 0
    summ = summarize(df, boot)
    unpaired = summ[summ.layer == "conv1"]
    unpaired_width = (unpaired["sid_per_pixel_high"] - unpaired["sid_per_pixel_low"]).min()
    paired_width = (diffs["sid_per_pixel_diff_high"] - diffs["sid_per_pixel_diff_low"]).iloc[0]
    assert paired_width < 0.3 * unpaired_width


def test_compare_writes_intervals_differences_and_named_layer_ticks(tmp_path, random_shapesnet, monkeypatch):
    import infoflow.viz as viz

    ticks = {}
    save = viz.save_figure

    def capture(fig, path, provenance="", tight=True):
        if Path(path).name.endswith("_curves.png"):
            ax = fig.axes[0]
            ticks[Path(path).name] = ([t.get_text() for t in ax.get_xticklabels()], len(ax.collections))
        return save(fig, path, provenance, tight)

    monkeypatch.setattr(viz, "save_figure", capture)
    compare = f"analysis.compare=[{{name: a, model: shapesnet, weights: none}}, {{name: b, model: shapesnet, weights: '{random_shapesnet}'}}]"
    summary = _evaluate(tmp_path, "analysis=layerwise", compare, *TINY_SHAPES, "analysis.layers=[conv1,conv3]",
                        "analysis.ru=false", "analysis.bootstrap.n_resamples=500", *QUICK,
                        "analysis.num_images=3")
    table = pd.read_csv(tmp_path / "layerwise_summary.csv")
    for q in ("sid_per_pixel", "concentration"):
        assert {q, f"{q}_low", f"{q}_high"} <= set(table.columns)
        assert ((table[f"{q}_low"] <= table[q]) & (table[q] <= table[f"{q}_high"])).all()
    diffs = pd.read_csv(tmp_path / "layerwise_differences.csv")
    assert list(diffs["model"]) == ["b", "b"] and list(diffs["layer"]) == ["conv1", "conv3"]
    rows = pd.read_csv(tmp_path / "layerwise.csv")
    a = rows[(rows.model == "a") & (rows.layer == "conv3")].sort_values("image")["sid_per_pixel"].to_numpy()
    b = rows[(rows.model == "b") & (rows.layer == "conv3")].sort_values("image")["sid_per_pixel"].to_numpy()
    assert diffs.iloc[1]["sid_per_pixel_diff"] == pytest.approx((b - a).mean())
    assert "sid_per_pixel_diff_low" in (tmp_path / "layerwise_differences.md").read_text()
    assert summary["b/conv3/sid_per_pixel_diff_high"] == pytest.approx(diffs.iloc[1]["sid_per_pixel_diff_high"])
    assert summary["a/conv1/sid_per_pixel_low"] == pytest.approx(table.iloc[0]["sid_per_pixel_low"])
    assert ticks["sid_curves.png"] == (["conv1", "conv3"], 2)  # layer names; one band per model
    assert ticks["sid_diff_curves.png"][0] == ["conv1", "conv3"]
