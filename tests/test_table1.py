"""`evaluate.py experiment=table1`: method configs, the Lightning evaluation loop, outputs, 1 vs 2 processes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config, run_script
from omegaconf import DictConfig, OmegaConf

from infoflow.analyses.attribution_metrics import AttributionEvaluation, MetricSettings
from infoflow.analyses.sharded_images import evaluation_loader
from infoflow.analyses.table1 import _method_factory, row_configs
from infoflow.builders import build_datamodule, build_method, build_model
from infoflow.data.shapes import ShapesDataModule
from infoflow.tasks.default_weights import train_shapesnet

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
#: tiny sizes shared by the end-to-end runs
TINY = [
    "experiment=table1", "analysis.num_images=8", "analysis.grid_images=2", "data.num_train=64",
    "data.num_test=16", "data.batch_size=4", "analysis.sensitivity.num_subsets=8", "analysis.sensitivity.num_n=4",
    "analysis.sanity.num_images=2", "analysis.sanity.method_overrides.estimator_samples=32",
    "analysis.rows.iba-beta10.estimator_samples=32", "analysis.rows.iba-beta10.steps=2",
    "analysis.subset_images=2", "analysis.insertion_deletion.num_points=11", "analysis.road.fractions=[0.2,0.6]",
    "analysis.max_sensitivity.n_perturb_samples=3", "analysis.infidelity.n_perturb_samples=4",
]
#: the common metrics' columns in table1.md
NEW_COLUMNS = ["Ins AUC ↑", "Del AUC ↓", "ROAD (LeRF − MoRF) ↑", "Pointing ↑", "Energy PG ↑", "Mask ratio ↑", "Gini ↑",
               "Random-logit SSIM ↓", "Infidelity ↓", "Max-sens ↓"]


@pytest.fixture(scope="session")
def trained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ShapesNet trained for three epochs on the default shapes data (4 classes; about 30 CPU-seconds)."""
    path = tmp_path_factory.mktemp("weights") / "shapesnet.pt"
    torch.save(train_shapesnet(4, epochs=3), path)
    return path


def _cfg(*overrides: str) -> DictConfig:
    cfg = compose_config("evaluate", ["experiment=table1", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = "/tmp/unused"
    return cfg


#: rows that apply only to CNNs (no sound rule for attention) and only to ViTs
CNN_ONLY, VIT_ONLY = {"lrp-a1b0", "lrp-eps5", "pattern-attribution"}, {"attention-rollout"}


@pytest.mark.parametrize("model_name", ["shapesnet", "shapesvit"])
def test_every_method_config_composes_and_builds(model_name: str) -> None:
    """Every row that applies to the model builds and gives finite maps; the others are left out with their
    reason (LRP and PatternAttribution on a transformer, attention rollout on a CNN)."""
    cfg = _cfg(f"model={model_name}", "weights=none", "data.num_train=16", "data.num_test=8", "data.batch_size=8",
               "analysis.rows.iba-beta1.estimator_samples=16", "analysis.rows.iba-beta10.estimator_samples=16",
               "analysis.rows.iba-beta100.estimator_samples=16")
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    skipped: dict[str, str] = {}
    rows = row_configs(cfg, dm, model, skipped)
    assert "readout" not in rows  # needs readout_ckpt
    assert {"random", "occlusion-8x8", "gradcam", "iba-beta100", "ground-truth"} <= set(rows)
    left_out = CNN_ONLY if model_name == "shapesvit" else VIT_ONLY
    assert set(skipped) == left_out and not left_out & set(rows) and (CNN_ONLY | VIT_ONLY) - left_out <= set(rows)
    assert all(("transformer" if model_name == "shapesvit" else "needs a ViT") in r for r in skipped.values())
    assert rows["iba-beta1"].method.beta == 1 and rows["iba-beta100"].method.beta == 100
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    for label, run in rows.items():
        method = build_method(run, model, dm)
        if label == "ground-truth":
            continue
        maps = method.attribute(batch["image"][:2], batch["label"][:2])
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all(), label
    for name in (p.stem for p in (CONF_DIR / "method").glob("*.yaml")):
        assert _cfg(f"method={name}").method.name  # every file of the group composes


@pytest.mark.slow
def test_ground_truth_beats_random_degradation(trained_weights: Path) -> None:
    """In-process Lightning loop on the shapes default (a 3-epoch model): the object mask as the
    attribution has a larger degradation area than Random, whose area is about 0; its bbox ratio is high."""
    cfg = _cfg(f"weights={trained_weights}", "analysis.only=[random,ground-truth]")
    dm = ShapesDataModule(num_classes=4, batch_size=16)
    model = build_model(cfg, dm)
    rows = row_configs(cfg, dm)
    module = AttributionEvaluation(model, list(rows), _method_factory(rows, dm, cfg.analysis.sanity.method_overrides),
                                   MetricSettings(degradation={"num_points": 21}, sensitivity_tiles=()), boxes=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False)
    trainer.test(module, dataloaders=evaluation_loader(dm, 96), verbose=False)
    gt, rnd = module.results["ground-truth"], module.results["random"]
    for tile in (8, 14):
        assert gt["degradation"][tile].score > rnd["degradation"][tile].score + 0.02, tile
        assert abs(float(rnd["degradation"][tile].score)) < 0.05
    assert float(gt["bbox"]) > 0.5 > float(rnd["bbox"])


def _run_tiny(tmp_path: Path, name: str, *overrides: str) -> Path:
    out = tmp_path / name
    run_script("evaluate.py", *TINY, f"hydra.run.dir={out}", *overrides)
    return out


def test_table1_end_to_end_writes_table_curves_grid_and_wandb(tmp_path: Path) -> None:
    out = _run_tiny(tmp_path, "run", "weights=none", "analysis.only=[random,gradient,iba-beta10,ground-truth]")
    df = pd.read_csv(out / "table1.csv")
    assert list(df.method) == ["random", "gradient", "iba-beta10", "ground-truth"]
    assert {"degradation_8", "degradation_14", "bbox_ratio", "sensitivity_1_mean", "sanity_ssim_mean"} <= set(df)
    seconds = df.set_index("method").seconds_per_image
    assert (seconds >= 0).all() and seconds["iba-beta10"] > seconds["ground-truth"]  # IBA optimises, the oracle reads
    md = (out / "table1.md").read_text()
    assert "shapesnet degradation 8x8" in md and "shapesnet bbox ratio" in md and "| iba-beta10 |" in md
    for column in ("Sensitivity-n 1x1 (mean over n)", "Sensitivity-n 8x8 (mean over n)", "sanity SSIM (mean)",
                   "ms per image"):
        assert f"| {column} |" in md, column
    for column in NEW_COLUMNS:
        assert f"| {column} |" in md, column
    _check_common_metrics(df.set_index("method"))
    curves = pd.read_csv(out / "curves.csv")
    assert {"morf_8", "lerf_14", "sensitivity_1", "sensitivity_8", "sanity_ssim", "insertion", "deletion", "road_morf",
            "road_lerf"} <= set(curves.curve)
    for png in ("degradation_8", "degradation_14", "sensitivity_1", "sensitivity_8", "sanity_ssim", "heatmaps_grid",
                "insertion_deletion", "road"):
        assert (out / f"{png}.png").stat().st_size > 1000, png
    assert (out / "config.yaml").is_file() and any((out / "wandb").glob("offline-run-*"))


def _check_common_metrics(t: pd.DataFrame) -> None:
    """Ranges and closed forms of the common metrics' CSV columns (rows: random, gradient, iba-beta10, ground-truth)."""
    unit = ["insertion_auc", "deletion_auc", "pointing_game", "energy_pointing_game", "mask_ratio", "gini"]
    assert ((t[unit] >= 0) & (t[unit] <= 1)).all().all()
    assert t.road.abs().max() <= 1 and (t.infidelity >= 0).all()
    gt, rnd = t.loc["ground-truth"], t.loc["random"]
    # the mask itself: its top-n pixels are the mask, its maximum lies on it, all its mass is inside
    assert gt.mask_ratio == 1.0 and gt.pointing_game == 1.0 and gt.energy_pointing_game == 1.0
    assert gt.gini > 0.5 > rnd.gini > 0.2  # a small 0/1 mask is sparse; uniform noise: Gini about 1/3
    # the oracle reads the batch's mask: no re-attribution of perturbed images or of another class
    assert pd.isna(gt.max_sensitivity) and pd.isna(gt.random_logit_ssim)
    # random maps depend only on the image: the same map for the other class (SSIM 1); sensitive to any change
    assert rnd.random_logit_ssim == pytest.approx(1.0) and rnd.max_sensitivity > 0.1
    assert (t.drop(index="ground-truth").random_logit_ssim.between(-1, 1)).all()


@pytest.mark.slow
def test_two_processes_give_the_same_numbers_as_one(trained_weights: Path, tmp_path: Path) -> None:
    """trainer=ddp_cpu (2 gloo processes, disjoint unpadded shares of the images) == trainer=cpu, up to
    float32 rounding of the forward passes (the perturbation batches hold different images)."""
    args = ("analysis.only=[random,gradient,ground-truth]", f"weights={trained_weights}")
    one = pd.read_csv(_run_tiny(tmp_path, "one", *args, "trainer=cpu") / "table1.csv")
    two = pd.read_csv(_run_tiny(tmp_path, "two", *args, "trainer=ddp_cpu") / "table1.csv")
    assert list(one.method) == ["random", "gradient", "ground-truth"]
    timings = ["seconds_per_image"]  # wall time: the only column that may differ
    pd.testing.assert_frame_equal(one.drop(columns=timings), two.drop(columns=timings), check_exact=False,
                                  rtol=1e-5, atol=1e-6)


def test_method_metrics_do_not_depend_on_batching() -> None:
    """`MethodMetrics` (per-image seeds for ROAD, infidelity, max-sensitivity and the random logit): one batch of
    4 images gives the results of two batches of 2 in the other order, as two DDP ranks would see them."""
    from infoflow.interface import METHODS
    from infoflow.metrics.suite import MethodMetrics

    model = build_model(_cfg("weights=none"), ShapesDataModule(num_classes=4))
    method = METHODS.get("gradient")(model)
    settings = MetricSettings(degradation_tiles=(8,), degradation={"num_points": 5}, sensitivity_tiles=(),
                              insertion_deletion={"num_points": 5}, road={"fractions": (0.3,)},
                              infidelity={"n_perturb_samples": 3}, max_sensitivity={"n_perturb_samples": 2},
                              subset_images=3, sanity_images=3, seed=5)
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[:, 20:40, 10:30] = True
    batch = {"image": torch.randn(4, 3, 64, 64, generator=g), "label": torch.tensor([0, 1, 2, 3]),
             "index": torch.arange(4), "mask": masks, "box_mask": masks}
    results = []
    for parts in ([[0, 1, 2, 3]], [[3, 1], [2, 0]]):
        metrics = MethodMetrics(model.module, (64, 64), settings, boxes=True, masks=True, num_classes=4)
        for part in parts:
            b = {k: v[part] for k, v in batch.items()}
            with torch.enable_grad():
                maps = method.attribute(b["image"], b["label"])
            metrics.update(method, b, b["label"], maps)
        results.append(metrics.results())
    one, two = results
    assert set(one) == {"degradation_8", "bbox", "mask_ratio", "pointing", "energy_pointing", "sparseness",
                        "insertion_deletion", "road", "infidelity", "max_sensitivity", "random_logit"}
    for name in one:
        a, b = (torch.cat([v.reshape(-1) for v in r[name]]) if isinstance(r[name], tuple) else r[name]
                for r in (one, two))
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6, msg=name)
    assert one["max_sensitivity"] > 0 and one["infidelity"] > 0 and -1 <= one["random_logit"] <= 1
