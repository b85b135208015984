"""The evaluation callbacks (`infoflow.callbacks`): bad settings stop before training with one line, the
numbers do not depend on how the subset is sharded, and a real ``train.py`` run logs W&B charts, tables
and images (read back from the offline run file), CSV and PNG files."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, run_script

from infoflow.callbacks import AttributionMetricsCallback, LayerwiseCallback
from infoflow.data.shapes import ShapesDataModule
from infoflow.errors import ConfigError
from infoflow.models.zoo import get_model
from infoflow.tasks.classifier import ClassifierModule

SIZE = 32
DATA = {"image_size": SIZE, "num_train": 16, "num_val": 8, "num_test": 8, "batch_size": 8}
CHEAP_SID = {"steps": 3, "samples": 2, "eval_samples": 4, "projection_iters": 2}


def _fit(callback: pl.Callback, dm: ShapesDataModule | None = None, tmp: Path | None = None) -> pl.Trainer:
    dm = dm or ShapesDataModule(**DATA)
    torch.manual_seed(0)
    module = ClassifierModule(get_model("shapesnet", "none", 4, (3, SIZE, SIZE)).module, 4)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], default_root_dir=tmp)
    trainer.fit(module, datamodule=dm)
    return trainer


# ---- bad input: one ConfigError line, before any training step -------------------------------------
@pytest.mark.parametrize("cls", [LayerwiseCallback, AttributionMetricsCallback])
@pytest.mark.parametrize("n", [0, -1])
def test_every_n_epochs_must_be_positive(cls: type, n: int) -> None:
    with pytest.raises(ConfigError, match=r"every_n_epochs must be an integer >= 1"):
        cls(model="shapesnet", every_n_epochs=n)


def _fails_before_training(callback: pl.Callback, match: str, tmp_path: Path,
                           dm: ShapesDataModule | None = None) -> None:
    steps: list[int] = []

    class Count(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            steps.append(1)

    dm = dm or ShapesDataModule(**DATA)
    module = ClassifierModule(get_model("shapesnet", "none", 4, (3, SIZE, SIZE)).module, 4)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[callback, Count()], default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=match) as err:
        trainer.fit(module, datamodule=dm)
    assert "\n" not in str(err.value)
    assert steps == []  # nothing trained


def test_unknown_layer_lists_the_layers(tmp_path: Path) -> None:
    cb = LayerwiseCallback(model="shapesnet", layers=["conv9"])
    _fails_before_training(cb, r"callbacks.layerwise.layers: unknown layer 'conv9'.*conv1, conv2, conv3, conv4", tmp_path)


def test_concentration_needs_masks_or_boxes(tmp_path: Path) -> None:
    dm = ShapesDataModule(**DATA)
    dm.has_masks = dm.has_boxes = False  # data without masks or boxes
    cb = LayerwiseCallback(model="shapesnet", concentration=True)
    _fails_before_training(cb, r"concentration=true needs object masks or boxes", tmp_path, dm)


def test_ru_needs_decoders_or_a_budget(tmp_path: Path) -> None:
    cb = LayerwiseCallback(model="shapesnet", ru=True, decoder_dir=str(tmp_path / "none"))
    _fails_before_training(cb, r"ru=true, but the weights change during training.*decoder_steps=<N>", tmp_path)


def test_bbox_needs_boxes_and_methods_must_exist(tmp_path: Path) -> None:
    dm = ShapesDataModule(**DATA)
    dm.has_boxes = False
    _fails_before_training(AttributionMetricsCallback(model="shapesnet", bbox=True), r"bbox=true needs bounding boxes",
                           tmp_path, dm)
    with pytest.raises(ConfigError, match=r"unknown method 'nope'.*gradient"):
        AttributionMetricsCallback(model="shapesnet", methods=[{"name": "nope"}])


# ---- the numbers do not depend on the sharding -----------------------------------------------------
class _Shard:
    """Stands in for the trainer in `measure`: one rank of a world."""

    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size, self.is_global_zero = rank, world, rank == 0


def test_layerwise_rows_do_not_depend_on_the_sharding(tmp_path: Path) -> None:
    """Each image's SID/RU is seeded by its global index: the rows of two shards are those of one process."""
    cb = LayerwiseCallback(model="shapesnet", num_images=3, layers=["conv1", "conv3"], sid=CHEAP_SID,
                           decoder_steps=2, output_dir=str(tmp_path))
    trainer = _fit(cb, tmp=tmp_path)
    module, dm = trainer.lightning_module, trainer.datamodule
    whole = cb.measure_images(_Shard(0, 1), module, dm, 5)
    parts = []
    for rank in (0, 1):
        cb.shard = lambda _t, r=rank: torch.arange(3)[r::2]  # type: ignore[method-assign]
        parts.append(cb.measure_images(_Shard(0, 1), module, dm, 5))
    sharded = pd.concat(parts).sort_values(["image", "layer_index"]).reset_index(drop=True)
    assert len(parts[0]) == 4 and len(parts[1]) == 2  # images 0, 2 and 1, at 2 layers
    pd.testing.assert_frame_equal(sharded, whole, check_exact=False, rtol=1e-6)
    assert whole["sid_per_pixel"].notna().all() and whole["ru_per_pixel"].notna().all()
    assert whole["concentration"].notna().all()
    # the logged table holds the means over the 3 images (the fit's last epoch, 1)
    means = pd.read_csv(tmp_path / "callbacks" / "layerwise.csv")
    images = pd.read_csv(tmp_path / "callbacks" / "layerwise_images.csv")
    assert means["epoch"].tolist() == [1, 1] and means["images"].tolist() == [3, 3]
    assert means["sid_per_pixel"].to_numpy() == pytest.approx(
        images.groupby("layer_index")["sid_per_pixel"].mean().to_numpy())
    # each mean comes with the bootstrap interval over the same 3 images
    from infoflow.stats import mean_interval

    for q in ("sid_per_pixel", "concentration", "ru_per_pixel"):
        assert ((means[f"{q}_low"] <= means[q]) & (means[q] <= means[f"{q}_high"])).all(), q
        for layer_index, g in images.groupby("layer_index"):
            iv = mean_interval(g[q].to_numpy(), level=cb.bootstrap.level, seed=cb.bootstrap.seed,
                               n_resamples=cb.bootstrap.n_resamples)
            row = means[means["layer_index"] == layer_index].iloc[0]
            assert (row[f"{q}_low"], row[f"{q}_high"]) == pytest.approx((iv.low, iv.high)), q
    # the per-image rows carry the analysis's columns (one row builder for both)
    assert {"constraint_ratio_fresh", "converged", "label", "layer"} <= set(whole.columns)


def test_bootstrap_settings_are_checked_before_training() -> None:
    with pytest.raises(ConfigError, match="bootstrap.level"):
        LayerwiseCallback(model="shapesnet", bootstrap={"level": 95})
    with pytest.raises(ConfigError, match="callbacks.layerwise.bootstrap: .*valid fields: level, n_resamples"):
        LayerwiseCallback(model="shapesnet", bootstrap={"confidence": 0.9})


def test_layer_curves_name_the_layers_and_draw_bands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import infoflow.viz as viz

    seen = {}
    save = viz.save_figure

    def capture(fig, path, provenance="", tight=True):  # type: ignore[no-untyped-def]
        ax = fig.axes[0]
        seen["ticks"] = [t.get_text() for t in ax.get_xticklabels()]
        seen["bands"] = [c.get_paths()[0].vertices for c in ax.collections]
        return save(fig, path, provenance, tight)

    monkeypatch.setattr(viz, "save_figure", capture)
    mean, low, high = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.0]), np.array([1.5, 2.5, 4.0])
    viz.plot_layer_curves({"a": (mean, low, high)}, ["conv1", "conv2", "fc"], tmp_path / "c.png", "SID")
    assert seen["ticks"] == ["conv1", "conv2", "fc"]
    [band] = seen["bands"]
    assert band[:, 1].min() == pytest.approx(0.5) and band[:, 1].max() == pytest.approx(4.0)


# ---- a real train.py run: W&B (read back), CSV, PNG ------------------------------------------------
def wandb_records(run_dir: Path) -> list[Any]:
    """The records of the offline W&B run file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def history_and_charts(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """W&B history rows ({key: value}) and custom-chart specs ({chart key: spec}) of an offline run."""
    history, charts = [], {}
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "config":
            for u in r.config.update:
                if list(u.nested_key[:2]) == ["_wandb", "visualize"]:
                    charts[u.nested_key[2]] = json.loads(u.value_json)
    return history, charts


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    run_script("train.py", "task=classifier", "callbacks=[default,layerwise,attribution_metrics]",
               *[f"data.{k}={v}" for k, v in DATA.items()], "trainer.max_epochs=2", "logger=wandb",
               "callbacks.progress_bar=null", "callbacks.layerwise.every_n_epochs=1",
               "callbacks.layerwise.num_images=2", "callbacks.layerwise.layers=[conv1,conv3]",
               *[f"callbacks.layerwise.sid.{k}={v}" for k, v in CHEAP_SID.items()],
               "callbacks.attribution_metrics.num_images=4", f"hydra.run.dir={run}")
    return run


def test_cli_run_logs_layerwise_charts_tables_and_images_to_wandb(cli_run: Path) -> None:
    history, charts = history_and_charts(cli_run)
    logged = {k: v for row in history for k, v in row.items()}
    for key in ("layerwise/sid_by_layer", "layerwise/concentration_by_layer",
                "attribution_metrics/degradation_curves", "attribution_metrics/sensitivity_n"):
        assert charts[key]["panel_config"]["panelDefId"] == "wandb/lineseries/v0", key
        assert logged[f"{key}_table/_type"] == "table-file"
    assert logged["layerwise/table/_type"] == "table-file"
    assert logged["layerwise/sid_layer_epoch/_type"] == "image-file"
    assert logged["attribution_metrics/metric_epoch/_type"] == "image-file"
    # the chart's table holds one line per evaluated epoch (2) over the 2 layers
    media = next(cli_run.glob("wandb/offline-run-*/files"))
    final = [r for r in history if "layerwise/sid_by_layer_table/path" in r][-1]
    table = json.loads((media / final["layerwise/sid_by_layer_table/path"]).read_text())
    assert len(table["data"]) == 4 and {row[1] for row in table["data"]} == {"epoch 1", "epoch 2"}
    # scalars: one per layer and epoch, equal to the CSV
    csv = pd.read_csv(cli_run / "callbacks" / "layerwise.csv")
    sid = [r["layerwise/sid/conv3"] for r in history if "layerwise/sid/conv3" in r]
    assert sid == pytest.approx(csv[csv["layer"] == "conv3"]["sid_per_pixel"].tolist())
    assert sorted(csv["epoch"].unique()) == [1, 2] and csv["seconds"].gt(0).all()


def test_cli_run_writes_csv_and_png(cli_run: Path) -> None:
    out = cli_run / "callbacks"
    images = pd.read_csv(out / "layerwise_images.csv")
    assert len(images) == 2 * 2 * 2  # epochs x images x layers
    assert images["concentration"].notna().all()  # shapes have masks
    assert images["ru_per_pixel"].isna().all()  # RU skipped: no decoders, no budget
    assert "RU skipped: the weights change during training" in (cli_run / "train.log").read_text()
    attr = pd.read_csv(out / "attribution_metrics.csv")
    assert set(attr["method"]) == {"gradient", "gradcam"}
    pick = (attr["epoch"] == 2) & (attr["method"] == "gradient")
    morf, lerf = (attr[pick & (attr["curve"] == c)]["y"].to_numpy() for c in ("morf", "lerf"))
    # both curves start at the unperturbed images and end at the fully degraded ones, normalised to 0 (eq. 9)
    assert morf[0] == pytest.approx(lerf[0]) and morf[-1] == pytest.approx(0, abs=1e-9) == lerf[-1]
    score = attr[pick & (attr["curve"] == "degradation")]["y"].item()
    x = attr[pick & (attr["curve"] == "morf")]["x"].to_numpy()
    assert score == pytest.approx(float(((lerf - morf)[1:] + (lerf - morf)[:-1]) @ (x[1:] - x[:-1]) / 2))
    assert attr[attr["curve"] == "bbox"]["y"].between(0, 1).all()
    means = pd.read_csv(out / "layerwise.csv")
    assert {"sid_per_pixel_low", "sid_per_pixel_high", "concentration_low", "concentration_high"} <= set(means)
    assert ((means["sid_per_pixel_low"] <= means["sid_per_pixel"])
            & (means["sid_per_pixel"] <= means["sid_per_pixel_high"])).all()
    for name in ("layerwise_sid_layer_epoch.png", "layerwise_sid_curves.png", "layerwise_concentration_curves.png",
                 "attribution_degradation_curves.png", "attribution_sensitivity_curves.png",
                 "attribution_metric_epoch.png"):
        assert (out / name).stat().st_size > 1000, name


def test_cli_bad_layer_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "task=classifier", "callbacks=[default,layerwise]",
                           "callbacks.layerwise.layers=[conv9]", *[f"data.{k}={v}" for k, v in DATA.items()],
                           "logger=csv", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "unknown layer 'conv9'" in lines[0] and "conv1, conv2, conv3, conv4" in lines[0]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


# ---- DDP: 2 processes log the numbers of 1 --------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_log_the_single_process_numbers(tmp_path: Path, random_shapesnet: Path) -> None:
    """The initial weights (epoch 0, at_start) are the same in both runs: the rows must match."""
    common = ["task=classifier", "callbacks=[default,layerwise,attribution_metrics]", f"weights={random_shapesnet}",
              *[f"data.{k}={v}" for k, v in DATA.items()], "trainer.max_epochs=1", "logger=csv",
              "callbacks.progress_bar=null", "callbacks.layerwise.at_start=true",
              "callbacks.attribution_metrics.at_start=true", "callbacks.layerwise.num_images=3",
              "callbacks.layerwise.layers=[conv1,conv3]",
              *[f"callbacks.layerwise.sid.{k}={v}" for k, v in CHEAP_SID.items()],
              "callbacks.attribution_metrics.num_images=5"]
    runs = {}
    for name, trainer in (("one", "trainer=cpu"), ("two", "trainer=ddp_cpu")):
        runs[name] = tmp_path / name
        run_script("train.py", trainer, *common, f"hydra.run.dir={runs[name]}")
    for csv in ("layerwise_images.csv", "attribution_metrics.csv"):
        one, two = (pd.read_csv(runs[n] / "callbacks" / csv) for n in ("one", "two"))
        one, two = (d[d["epoch"] == 0].drop(columns=[c for c in ("seconds",) if c in d]).reset_index(drop=True)
                    for d in (one, two))
        one, two = (d[d["curve"] != "seconds_per_image"].reset_index(drop=True) if "curve" in d else d
                    for d in (one, two))
        assert len(one) > 0
        pd.testing.assert_frame_equal(one, two, check_exact=False, rtol=1e-6, atol=1e-9)
