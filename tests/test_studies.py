"""Studies (``task=study``): the stage runner resumes, the report's verdicts follow the numbers, every study composes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import infoflow.studies  # noqa: F401  (registers task=study)
from infoflow.cli.plugins import name_plugins
from infoflow.errors import ConfigError
from infoflow.models import MODELS, get_model
from infoflow.studies.report import build_report, epoch_layers, model_table
from infoflow.studies.stages import check_stages, read_done, run_stages, stage_config
from infoflow.studies.verdicts import VERDICTS, spearman
from infoflow.tasks import TASKS

CONF = Path(__file__).resolve().parents[1] / "conf"
STUDIES = ["epochs", "compression", "distillation", "damage", "autoencoder"]
STUDY_CONFIGS = [f"{s}{v}" for s in STUDIES for v in ("", "_shapes")]


def _stages(tmp_path: Path, names: list[str], fail_at: str | None, calls: list[str]):
    def runner(name: str, cfg) -> dict:
        calls.append(name)
        if name == fail_at:
            raise RuntimeError(f"stage {name} broke")
        (tmp_path / name / "out.txt").write_text(str(cfg.value))  # a stage writes into its own directory
        return {"value": cfg.value}

    def config(name: str):
        (tmp_path / name).mkdir(exist_ok=True)
        return OmegaConf.create({"value": names.index(name) * 10})

    return lambda: run_stages(names, lambda n: tmp_path / n, config, runner)


def test_stage_runner_skips_finished_stages_and_resumes_after_a_failure(tmp_path: Path) -> None:
    names, calls = ["a", "b", "c", "d"], []
    with pytest.raises(RuntimeError, match="stage c broke"):
        _stages(tmp_path, names, "c", calls)()
    assert calls == ["a", "b", "c"]
    assert read_done(tmp_path / "a")["metrics"] == {"value": 0.0} and read_done(tmp_path / "c") is None
    calls.clear()
    records = _stages(tmp_path, names, None, calls)()  # the rerun: a and b are kept, c and d run
    assert calls == ["c", "d"]
    assert [records[n]["metrics"]["value"] for n in names] == [0.0, 10.0, 20.0, 30.0]
    calls.clear()
    _stages(tmp_path, names, None, calls)()
    assert calls == []  # everything done: nothing runs


def test_a_changed_stage_runs_again_with_every_stage_after_it(tmp_path: Path) -> None:
    names, calls = ["a", "b", "c"], []
    _stages(tmp_path, names, None, calls)()
    done = json.loads((tmp_path / "b" / "done.json").read_text())
    done["fingerprint"] = "stale"
    (tmp_path / "b" / "done.json").write_text(json.dumps(done))
    calls.clear()
    _stages(tmp_path, names, None, calls)()
    assert calls == ["b", "c"]


def _layers(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"model": m, "layer_index": i + 1, "layer": f"conv{i + 1}", "sid_per_pixel": v,
             "ru_per_pixel": np.nan, "concentration": v / 10} for m, vs in values.items() for i, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_report_tables_figures_and_computed_verdicts(tmp_path: Path) -> None:
    layers = _layers({"original": [-1.0, -0.5, 0.0], "pruned_50": [-1.1, -0.6, -0.2], "pruned_90": [-1.3, -0.9, -0.5]})
    records = {"o": {"metrics": {"test/acc": 0.9, "sparsity": 0.0}}, "p5": {"metrics": {"test/acc": 0.85, "sparsity": 0.5}},
               "p9": {"metrics": {"test/acc": 0.6, "sparsity": 0.9}}}
    robust = pd.DataFrame({"model": ["original", "pruned_50", "pruned_90"], "robustness_l2": [0.3, 0.2, 0.1]})
    models = model_table([{"name": "original", "stage": "o"}, {"name": "pruned_50", "stage": "p5"},
                          {"name": "pruned_90", "stage": "p9"}], records, layers, {"sparsity": "sparsity"}, robust)
    assert models.sid_last.tolist() == [0.0, -0.2, -0.5] and models.accuracy.tolist() == [0.9, 0.85, 0.6]
    report = build_report("compression", tmp_path, models, layers, {})
    assert [v.reproduced for v in report.verdicts] == [True, True]  # lower SID and SID ~ robustness (rho = 1)
    wide = pd.read_csv(tmp_path / "report.csv")
    assert wide.loc[wide.model == "pruned_90", "SID conv2"].item() == pytest.approx(-0.9)
    assert "RU conv1" not in wide and "conc conv3" in wide  # RU never measured: no columns
    assert {p.name for p in report.figures} == {"report_sid.png", "report_concentration.png"}
    text = (tmp_path / "report.md").read_text()
    assert "REPRODUCED" in text and "| pruned_50 |" in text
    # the same numbers reversed: the verdicts follow them
    flipped = _layers({"original": [-1.3, -0.9, -0.5], "pruned_50": [-1.1, -0.6, -0.2], "pruned_90": [-1.0, -0.5, 0.0]})
    models2 = model_table([{"name": n} for n in ("original", "pruned_50", "pruned_90")], {}, flipped, {}, robust)
    assert [v.reproduced for v in build_report("compression", tmp_path, models2, flipped, {}).verdicts] == [False, False]


def test_verdicts_of_the_other_studies_follow_the_numbers() -> None:
    def decide(study: str, values: dict[str, list[float]], claims: dict) -> bool | None:
        models = pd.DataFrame({"model": list(values)})
        return VERDICTS.get(study)(_layers(values), models, claims)[0].reproduced

    kd = {"scratch": "s", "distilled": "d"}
    assert decide("distillation", {"s": [0.0, 0.0], "d": [-0.1, -0.2]}, kd) is True
    assert decide("distillation", {"s": [0.0, 0.0], "d": [0.1, -0.05]}, kd) is False
    dmg = {"original": "o", "revised": "r", "revised_layer": "conv2"}
    assert decide("damage", {"o": [0.0, 0.0, 0.0], "r": [0.01, 0.5, 0.6]}, dmg) is True
    assert decide("damage", {"o": [0.0, 0.0, 0.0], "r": [0.5, 0.4, 0.6]}, dmg) is False  # the jump is at conv1
    ae = {"pairs": [["c", "a"]], "similar_tol": 0.1}
    assert decide("autoencoder", {"c": [-1.0, -2.0], "a": [-1.02, -2.05]}, ae) is True
    assert decide("autoencoder", {"c": [-1.0, -2.0], "a": [-0.5, -1.0]}, ae) is False
    assert decide("epochs", {"e0": [0, 1.0], "e1": [0, 0.2], "e2": [0, 0.5]}, {}) is True  # falls, then rises
    assert decide("epochs", {"e0": [0, 1.0], "e1": [0, 0.5], "e2": [0, 0.2]}, {}) is False
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)


@pytest.mark.parametrize("experiment", STUDY_CONFIGS)
def test_every_study_and_each_of_its_stages_composes(experiment: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        paper = [] if experiment.endswith("_shapes") else ["data.root=/data/cifar10"]
        study = compose("train", overrides=[f"experiment={experiment}", f"paths.output_dir={tmp_path}", *paper],
                        return_hydra_config=True)
        name_plugins(study, study.hydra.runtime.choices)
        assert study.task.name == "study" and "study" in TASKS and study.task.study in VERDICTS
        TASKS.get("study")(study).check()
        names = {m.name for m in study.task.models}
        for name in study.task.stages:
            cfg = stage_config(study, name)
            assert cfg.paths.output_dir == str(tmp_path / name)
            if study.task.stages[name].kind == "evaluate":
                assert {e.name for e in cfg.analysis.compare} == names
                for e in cfg.analysis.compare:  # the analysed layers exist in every compared network
                    entry = MODELS.get(e.model)()
                    with torch.device("meta"):
                        layers = entry.layers(entry.build(entry.num_classes))
                    assert set(cfg.analysis.layers or []) <= set(layers), (e.model, list(layers))
            elif study.task.stages[name].kind == "train":
                assert cfg.task.name in TASKS
            if not experiment.endswith("_shapes"):
                assert cfg.data.root == "/data/cifar10" and cfg.trainer.accelerator == "gpu"
        if experiment.endswith("_shapes"):  # every stage passes the entry points' check (paper data is absent here)
            check_stages(study)
        for m in study.task.models:  # the compared networks exist and are built from the stages' outputs
            assert m.stage is None or m.stage in study.task.stages
            assert m.model in MODELS


def test_a_stage_with_a_mistyped_option_is_one_clear_error(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        study = compose("train", overrides=["experiment=damage_shapes", f"paths.output_dir={tmp_path}",
                                            "task.stages.revised.overrides.model=nosuchnet"], return_hydra_config=True)
        name_plugins(study, study.hydra.runtime.choices)
        with pytest.raises(ConfigError, match="stage revised of the study does not compose"):
            stage_config(study, "revised")


def test_revised_model_has_four_7x7_filters_at_the_revised_layer() -> None:
    model = get_model("shapesnet_revised", num_classes=4).module
    conv = model.conv3[0]
    assert (conv.out_channels, conv.kernel_size, conv.padding) == (4, (7, 7), (3, 3))
    assert model.conv4[0].in_channels == 4 and model.conv3[1].num_features == 4
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_epochs_report_reads_the_layerwise_callback_csv(tmp_path: Path) -> None:
    # a synthetic callbacks/layerwise.csv: epochs 0..3 x conv1..conv3, rows shuffled; conv3 falls, then rises
    sid = {0: [-1.0, -0.5, 0.4], 1: [-1.1, -0.6, 0.1], 2: [-1.2, -0.7, 0.2], 3: [-1.3, -0.8, 0.3]}
    rows = [{"epoch": e, "layer_index": i + 1, "layer": f"conv{i + 1}", "sid_per_pixel": v, "sid_total": v * 4096,
             "constraint_ratio": 1.0, "concentration": v / 2, "ru_per_pixel": np.nan, "ratio_fresh": np.nan,
             "images": 2, "seconds": 1.0} for e, vs in sid.items() for i, v in enumerate(vs)]
    csv = tmp_path / "layerwise.csv"
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_csv(csv, index=False)
    layers = epoch_layers(csv)
    assert list(dict.fromkeys(layers.model)) == ["epoch_0", "epoch_1", "epoch_2", "epoch_3"]
    assert layers.loc[(layers.model == "epoch_2") & (layers.layer == "conv3"), "sid_per_pixel"].item() == 0.2
    models = model_table([{"name": f"epoch_{e}", "stage": "train" if e == 3 else None} for e in sid],
                         {"train": {"metrics": {"test/acc": 0.8}}}, layers, {}, None)
    assert models.sid_last.tolist() == [0.4, 0.1, 0.2, 0.3]
    assert np.isnan(models.accuracy.iloc[0]) and models.accuracy.iloc[-1] == 0.8
    report = build_report("epochs", tmp_path, models, layers, {})
    assert [v.reproduced for v in report.verdicts] == [True]  # minimum at epoch 1, then rising
    assert "minimum at epoch_1" in report.verdicts[0].measured
    assert pd.read_csv(tmp_path / "report.csv").loc[3, "conc conv2"] == pytest.approx(-0.4)
    # only falling: the verdict follows the numbers
    falling = pd.DataFrame(rows).assign(sid_per_pixel=lambda d: -d.epoch.astype(float) - d.layer_index)
    falling.to_csv(csv, index=False)
    layers = epoch_layers(csv)
    models = model_table([{"name": f"epoch_{e}"} for e in sid], {}, layers, {}, None)
    assert [v.reproduced for v in build_report("epochs", tmp_path, models, layers, {}).verdicts] == [False]
