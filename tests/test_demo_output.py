"""What `make demo` shows: the per-class summary, equal-size heatmap PNGs, a quiet terminal, seeded runs."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import infoflow  # noqa: F401  (installs the warning filters)
from infoflow.analyses.heatmaps import by_class
from infoflow.utils.determinism import make_deterministic
from infoflow.viz import plot_heatmap

ROOT = Path(__file__).resolve().parents[1]


def test_by_class_means_ratios_and_all_row() -> None:
    df = pd.DataFrame({
        "target": [0, 0, 2, 2, 2],
        "mean_inside": [1.0, 3.0, 0.5, 0.5, 2.0],
        "mean_outside": [0.5, 0.5, 1.0, 0.5, 1.5],
    })
    df["inside_outside_ratio"] = df["mean_inside"] / df["mean_outside"]
    table = by_class(df, ["circle", "square", "triangle"])
    assert table["class"].tolist() == ["circle", "triangle", "all"]  # absent classes are left out
    assert table["images"].tolist() == [2, 3, 5]
    assert table["mean_inside"].tolist() == pytest.approx([2.0, 1.0, 7 / 5])
    assert table["mean_outside"].tolist() == pytest.approx([0.5, 1.0, 0.8])
    assert table["ratio"].tolist() == pytest.approx([4.0, 1.0, 7 / 4])  # ratio of the means
    assert table["min_image_ratio"].tolist() == pytest.approx([2.0, 0.5, 0.5])


def test_heatmap_pngs_have_one_size_whatever_the_title_and_scale(tmp_path: Path) -> None:
    sizes = set()
    for i, (title, scale) in enumerate([("t", 1e-3), ("a much longer title " * 4, 1e4)]):
        path = plot_heatmap(torch.rand(3, 64, 64), scale * torch.rand(64, 64), title, "bits/pixel", tmp_path / f"{i}.png")
        sizes.add(Image.open(path).size)
    assert len(sizes) == 1


def test_third_party_noise_is_filtered_precisely(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infoflow._filter_warnings()  # what `import infoflow` installs (pytest resets the filters per test)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_make_deterministic_repeats_draws_and_asks_for_deterministic_kernels() -> None:
    try:
        make_deterministic(3)
        a = torch.rand(4)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        make_deterministic(3)
        assert torch.equal(torch.rand(4), a)
    finally:
        torch.use_deterministic_algorithms(False)


def test_figures_script_rejects_unknown_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("figures", ROOT / "experiments" / "figures.py")
    assert spec is not None and spec.loader is not None
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    assert figures.STEPS == ["demo", "table1", "layerwise", "grid", "grid_vit", "fig9", "bench"]
    assert figures.GROUPS["studies"] == [f"study_{s}" for s in
                                         ("distillation", "damage", "autoencoder", "compression", "epochs", "null")]
    assert all(figures.COMMAND_STEPS[s][0] == "train.py" for s in figures.GROUPS["studies"])
    monkeypatch.setattr("sys.argv", ["figures.py", "--out", str(tmp_path), "--only", "demo,tabel1"])
    with pytest.raises(SystemExit, match=r"unknown step\(s\) \['tabel1'\]; choose from demo, table1, layerwise, grid"):
        figures.main()
