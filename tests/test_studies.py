"""Studies (``task=study``): the stage runner resumes, the report's verdicts follow the numbers, every study composes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import infoflow.studies  # noqa: F401  (registers task=study)
from infoflow.cli.plugins import name_plugins
from infoflow.errors import ConfigError, UserError
from infoflow.models import MODELS, get_model
from infoflow.studies.report import build_report, epoch_layers, model_table, steps_check
from infoflow.studies.stages import check_stages, command_line, read_done, run_stages, seeded, stage_config
from infoflow.studies.study import AccuracyGateError, gate, packing_line, same_seed_before, study_jobs
from infoflow.studies.verdicts import VERDICTS
from infoflow.tasks import TASKS

CONF = Path(__file__).resolve().parents[1] / "conf"
STUDIES = ["epochs", "compression", "distillation", "damage", "autoencoder"]
STUDY_CONFIGS = [f"{s}{v}" for s in STUDIES for v in ("", "_shapes")] + ["null_shapes"]


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


def test_every_stage_line_ends_with_the_study_bar(tmp_path: Path, capsys) -> None:
    _stages(tmp_path, ["a", "b"], None, [])()
    _stages(tmp_path, ["a", "b"], None, [])()  # skipped stages count too
    ends = [line.split("  ")[-1].split()[1] for line in capsys.readouterr().out.splitlines()
            if "done in" in line or "skipped" in line]
    assert ends == ["1/2", "2/2", "1/2", "2/2"]


def test_a_changed_stage_runs_again_with_every_stage_after_it(tmp_path: Path) -> None:
    names, calls = ["a", "b", "c"], []
    _stages(tmp_path, names, None, calls)()
    done = json.loads((tmp_path / "b" / "done.json").read_text())
    done["fingerprint"] = "stale"
    (tmp_path / "b" / "done.json").write_text(json.dumps(done))
    calls.clear()
    _stages(tmp_path, names, None, calls)()
    assert calls == ["b", "c"]


class _Rendezvous:
    """A picklable stage runner for ``jobs`` > 1: stages in `together` each wait (up to a minute) until the other
    has started, so they pass only when run at once; every stage records its process and times."""

    def __init__(self, root: Path, together: tuple[str, str], fail_at: str | None = None) -> None:
        self.root, self.together, self.fail_at = root, together, fail_at

    def __call__(self, name: str, cfg) -> dict:
        start = time.time()
        (self.root / f"{name}.started").touch()
        if name in self.together:
            other = self.root / f"{self.together[1 - self.together.index(name)]}.started"
            while not other.exists():
                if time.time() - start > 60:
                    raise RuntimeError(f"stage {name}: {other.stem} never ran at the same time")
                time.sleep(0.05)
        if name == self.fail_at:
            raise RuntimeError(f"stage {name} broke")
        time.sleep(0.5)
        print(f"stage {name} writes to its log")
        (self.root / name / "times.json").write_text(json.dumps({"pid": os.getpid(), "start": start, "end": time.time()}))
        return {"value": cfg.value}


def _parallel(tmp_path: Path, runner, names: list[str], after: dict[str, list[str]]):
    def config(name: str):
        (tmp_path / name).mkdir(exist_ok=True)
        return OmegaConf.create({"value": names.index(name) * 10})

    return run_stages(names, lambda n: tmp_path / n, config, runner, after=lambda n: after[n], jobs=2)


def test_parallel_stages_run_at_once_in_their_own_processes_after_their_predecessors(tmp_path: Path) -> None:
    names, after = ["a0", "a1", "b0", "b1"], {"a0": [], "a1": [], "b0": ["a0"], "b1": ["a1"]}
    records = _parallel(tmp_path, _Rendezvous(tmp_path, ("a0", "a1")), names, after)
    assert [records[n]["metrics"]["value"] for n in names] == [0.0, 10.0, 20.0, 30.0]
    times = {n: json.loads((tmp_path / n / "times.json").read_text()) for n in names}
    assert times["b0"]["start"] >= times["a0"]["end"] and times["b1"]["start"] >= times["a1"]["end"]
    pids = [t["pid"] for t in times.values()]
    assert os.getpid() not in pids and len(set(pids)) == 4  # a fresh process per stage
    assert "stage b1 writes to its log" in (tmp_path / "b1" / "stage.log").read_text()
    calls = []
    _stages(tmp_path, names, None, calls)()  # the same configs, in order and in-process: all done, none runs
    assert calls == []


def test_a_parallel_robustness_unit_gets_its_models_resolved_in_the_study_process(
    tmp_path: Path, random_shapesnet: Path
) -> None:
    """A spawned worker has no Hydra run: the robustness parameters (``${task.models}``, whose weights live under
    ``paths.output_dir = ${hydra:runtime.output_dir}``) must reach it resolved and redirected to its seed."""
    from hydra.core.hydra_config import HydraConfig

    from infoflow.studies.study import StageRunner

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        study = compose("train", overrides=["experiment=compression_shapes", "logger=csv"], return_hydra_config=True)
        study.hydra.runtime.output_dir = str(tmp_path)  # as in a train.py run
        HydraConfig.instance().set_config(study)
        try:
            name_plugins(study, study.hydra.runtime.choices)
            with open_dict(study):
                del study["hydra"]
            assert study.paths.output_dir == str(tmp_path)  # through ${hydra:...}
            study.task.common = {"data.num_train": 64, "data.num_val": 16, "data.num_test": 32,
                                 "data.batch_size": 16}
            study.task.stages.robustness.params.update({"num_images": 2, "top_k": 1, "c_values": [1.0], "steps": 1})
            names = [m.name for m in study.task.models]
            for name in names:  # what the pruning stages of seed 1 would have written
                (tmp_path / name / "seed_1").mkdir(parents=True)
                (tmp_path / name / "seed_1" / "model.pt").write_bytes(random_shapesnet.read_bytes())
            key = "robustness/seed_1"
            runner = StageRunner(study, {key: ("robustness", 1)})
            where = tmp_path / "robustness" / "seed_1"
            records = run_stages([key], lambda k: where, lambda k: stage_config(study, "robustness", 1), runner,
                                 jobs=2)
        finally:
            HydraConfig.instance().cfg = None
    assert set(records[key]["metrics"]) == {f"{n}/robustness_l2" for n in names}
    assert list(pd.read_csv(where / "robustness.csv").model) == names
    assert f"{tmp_path}/pruned_90/seed_1/model.pt" in str(runner.params[key].models[-1].weights)


def test_a_failed_parallel_stage_lets_the_running_one_finish_and_the_rerun_resumes(tmp_path: Path) -> None:
    names, after = ["a0", "a1", "b1"], {"a0": [], "a1": [], "b1": ["a1"]}
    with pytest.raises(RuntimeError, match="stage a1 broke"):
        _parallel(tmp_path, _Rendezvous(tmp_path, ("a0", "a1"), fail_at="a1"), names, after)
    assert read_done(tmp_path / "a0") is not None  # it was running when a1 failed
    assert read_done(tmp_path / "a1") is None and read_done(tmp_path / "b1") is None  # b1 waits for a1: never started
    assert "RuntimeError: stage a1 broke" in (tmp_path / "a1" / "stage.log").read_text()  # the traceback is logged
    kept = (tmp_path / "a0" / "done.json").read_text()
    records = _parallel(tmp_path, _Rendezvous(tmp_path, ("-", "-")), names, after)
    assert set(records) == set(names) and (tmp_path / "a0" / "done.json").read_text() == kept  # a0 not rerun


def test_a_stage_that_ran_makes_its_dependants_in_a_later_call_run_again(tmp_path: Path) -> None:
    calls: list[str] = []

    def runner(name: str, cfg) -> dict:
        calls.append(name)
        return {}

    def both() -> None:  # a study's two calls: the trainings, then the analyses that read their models
        ran: set[str] = set()
        config = lambda n: OmegaConf.create({"stage": n})  # noqa: E731
        run_stages(["train"], lambda n: tmp_path / n, config, runner, ran=ran)
        run_stages(["analyse"], lambda n: tmp_path / n, config, runner, after=lambda n: ["train"], ran=ran)

    both()
    assert calls == ["train", "analyse"]
    calls.clear()
    both()
    assert calls == []
    done = json.loads((tmp_path / "train" / "done.json").read_text())
    (tmp_path / "train" / "done.json").write_text(json.dumps({**done, "fingerprint": "stale"}))
    calls.clear()
    both()
    assert calls == ["train", "analyse"]  # its own config is unchanged, but the model it reads was trained again


def test_the_study_command_line_reaches_every_stage_but_the_studys_own_keys(tmp_path: Path) -> None:
    cli = ["trainer.max_epochs=2", "data.num_test=40", "callbacks=none", "task.seeds=[5]", "experiment=null_shapes",
           "seed=7", "hydra.run.dir=/x"]
    assert command_line(cli) == ["trainer.max_epochs=2", "data.num_test=40", "callbacks=none"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        study = _null_study(tmp_path, tiny=False).cfg
        train, evaluate = stage_config(study, "arm_a", 0, cli=cli), stage_config(study, "layerwise", 0, cli=cli)
        plain = stage_config(study, "arm_a", 0, cli=[])
    assert train.trainer.max_epochs == 2 and plain.trainer.max_epochs == 12  # the command line wins
    assert train.data.num_test == evaluate.data.num_test == 40 and plain.data.num_test == 500
    assert train.seed == 0 and train.task.name == "classifier"  # the replicate seed and the stage's own task
    assert "callbacks" not in evaluate  # a train-only group does not reach an analysis


def test_a_study_unit_waits_for_the_earlier_units_of_its_seed() -> None:
    order = ["a/seed_0", "a/seed_1", "b/seed_0", "b/seed_1", "check/seed_0"]
    split = {k: (k.split("/")[0], int(k[-1])) for k in order}
    assert same_seed_before(order, split, "a/seed_1") == []
    assert same_seed_before(order, split, "b/seed_1") == ["a/seed_1"]
    assert same_seed_before(order, split, "check/seed_0") == ["a/seed_0", "b/seed_0"]
    unseeded = {"x": ("x", None), "y": ("y", None)}
    assert same_seed_before(["x", "y"], unseeded, "y") == ["x"]


def test_the_packing_line_is_the_unit_time_over_the_processes_wall_time() -> None:
    assert "busy 100% of it" in packing_line(120.0, 4, 60.0, 2)  # two processes, both busy all along
    assert "busy 50% of it" in packing_line(60.0, 2, 60.0, 2) and "2 units ran: 1.0 unit-minutes in 1.0 min" in \
        packing_line(60.0, 2, 60.0, 2)


def test_study_jobs_auto_is_one_process_per_core_without_cuda_and_splits_the_threads() -> None:
    def jobs(value):
        return study_jobs(OmegaConf.create({"task": {"jobs": value}}))

    cores = 1 if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    assert jobs("auto") == (cores, max(1, torch.get_num_threads() // cores))
    assert jobs(1) == (1, torch.get_num_threads())
    for bad in (0, -1, "two", True, 1.5):
        with pytest.raises(ConfigError, match=r"task.jobs must be an integer >= 1 or 'auto'"):
            jobs(bad)


def _cells(values: dict[str, list[float]], seeds: int = 3, images: int = 16, noise: float = 0.05) -> pd.DataFrame:
    """Per-image rows: model -> layer means, plus per-seed and per-image normal noise (seeded)."""
    rng, rows = np.random.default_rng(0), []
    for m, vs in values.items():
        for s in range(seeds):
            off = rng.normal(0, noise)
            for i in range(images):
                e = rng.normal(0, noise)
                rows += [{"model": m, "seed": s, "image": i, "layer_index": j + 1, "layer": f"conv{j + 1}",
                          "sid_per_pixel": v + off + e, "ru_per_pixel": np.nan, "concentration": (v + off + e) / 10}
                         for j, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_report_tables_figures_and_interval_verdicts(tmp_path: Path) -> None:
    cells = _cells({"original": [-1.0, -0.5, 0.0], "pruned_50": [-1.1, -0.6, -0.2], "pruned_90": [-1.3, -0.9, -0.5]})
    tables = []
    for s in range(3):
        records = {"o": {"metrics": {"test/acc": 0.99, "sparsity": 0.0}},
                   "p5": {"metrics": {"test/acc": 0.98, "sparsity": 0.5}},
                   "p9": {"metrics": {"test/acc": 0.6 + s / 100, "sparsity": 0.9}}}
        robust = pd.DataFrame({"model": ["original", "pruned_50", "pruned_90"], "robustness_l2": [0.3, 0.2, 0.1],
                               "attack_success": [1.0, 1.0, 1.0]})
        means = cells[cells.seed == s].groupby(["model", "layer_index", "layer"], as_index=False).mean(numeric_only=True)
        tables.append(model_table([{"name": "original", "stage": "o"}, {"name": "pruned_50", "stage": "p5"},
                                   {"name": "pruned_90", "stage": "p9"}], records, means, {"sparsity": "sparsity"},
                                  robust).assign(seed=s))
    models = pd.concat(tables, ignore_index=True)
    report = build_report("compression", tmp_path, models, cells, {"margin": {"value": 0.5, "unit": "nats/pixel"}})
    words = {v.claim: v.word for v in report.verdicts}
    assert words["Fig. 4b: compression lowers SID (pruned_90 - original, mean conv-layer SID)"] == "REPRODUCED"
    assert words["Fig. 4b: compression leaves ru unchanged (pruned_50 - original)"] == "INCONCLUSIVE"  # not measured
    assert words["Fig. 4b: compression leaves concentration unchanged (pruned_50 - original)"] == "REPRODUCED"
    assert report.verdicts[-1].word == "REPRODUCED"  # rho = 1 on every seed
    wide = pd.read_csv(tmp_path / "report.csv")
    row = wide[wide.model == "pruned_90"].iloc[0]
    assert row["SID conv2"] == pytest.approx(cells[(cells.model == "pruned_90") & (cells.layer == "conv2")]
                                             .sid_per_pixel.mean())
    assert row.accuracy_min == pytest.approx(0.6) and row.seeds == 3
    layers = pd.read_csv(tmp_path / "report_layers.csv")
    assert (layers.sid_per_pixel_low < layers.sid_per_pixel).all() and (layers.sid_per_pixel < layers.sid_per_pixel_high).all()
    assert {"sid_per_pixel_seed_sd", "sid_per_pixel_image_se"} <= set(layers) and (layers.images == 16).all()
    assert "RU conv1" not in wide and "conc conv3" in wide  # RU never measured: no columns
    assert {p.name for p in report.figures} == {"report_sid.png", "report_concentration.png"}
    text = (tmp_path / "report.md").read_text()
    assert "REPRODUCED" in text and "| pruned_50 |" in text and "interval [" in text


def test_seeded_paths_point_into_each_seeds_stage_directory(tmp_path: Path) -> None:
    study = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "task": {"stages": {"a": {}, "ab": {}}}})
    value = {"w": [f"{tmp_path}/a/model.pt", f"{tmp_path}/ab/model.pt", "default", f"{tmp_path}/a/seed_3/x"]}
    assert seeded(value, study, 2) == {"w": [f"{tmp_path}/a/seed_2/model.pt", f"{tmp_path}/ab/seed_2/model.pt",
                                             "default", f"{tmp_path}/a/seed_3/x"]}
    assert seeded(value, study, None) == value


def test_the_accuracy_gate_names_the_arm_the_seed_and_the_setting(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "task": {
        "seeds": [0, 1], "min_accuracy": 0.95, "ungated": ["pruned"],
        "stages": {"a": {"kind": "train"}, "p": {"kind": "train"}},
        "models": [{"name": "arm", "stage": "a"}, {"name": "pruned", "stage": "p"}, {"name": "teacher", "stage": None}]}})
    records = {"a/seed_0": {"metrics": {"test/acc": 0.99}}, "a/seed_1": {"metrics": {"test/acc": 0.9}},
               "p/seed_0": {"metrics": {"test/acc": 0.3}}, "p/seed_1": {"metrics": {"test/acc": 0.3}}}
    with pytest.raises(AccuracyGateError, match=r"arm arm \(stage a, seed 1\) reached test accuracy 0.900 < "
                       r"task.min_accuracy=0.95: raise task.stages.a.overrides.trainer.max_epochs"):
        gate(cfg, records)
    assert issubclass(AccuracyGateError, UserError)
    records["a/seed_1"]["metrics"]["test/acc"] = 0.96
    gate(cfg, records)  # the pruned arm is reported, not gated


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
            if study.task.get("seeds"):  # each replicate seed in its own directory, reading its own arms
                seeded_cfg = stage_config(study, name, 1)
                assert seeded_cfg.paths.output_dir == str(tmp_path / name / "seed_1")
                assert seeded_cfg.seed == 1 + int(study.task.stages[name].get("seed_offset") or 0)
                for e in (seeded_cfg.analysis.compare if study.task.stages[name].kind == "evaluate" else []):
                    assert e.weights == "default" or "/seed_1/" in e.weights
            if not experiment.endswith("_shapes"):
                assert cfg.data.root == "/data/cifar10" and cfg.trainer.accelerator == "gpu"
        if experiment.endswith("_shapes"):  # the protocol: 3 seeds, gated, at least 16 images per arm and seed
            assert list(study.task.seeds) == [0, 1, 2] and study.task.min_accuracy == 0.95
            for spec in study.task.stages.values():
                if spec.kind == "evaluate":
                    assert spec.overrides["analysis.num_images"] >= 16
            check_stages(study)  # every stage passes the entry points' check (paper data is absent here)
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
    # one seed and one value per epoch: no interval, so no decision; the lowest interior epoch is named
    assert [v.word for v in report.verdicts] == ["INCONCLUSIVE", "INCONCLUSIVE"]
    assert "the lowest interior epoch is epoch_1" in report.verdicts[1].measured
    assert pd.read_csv(tmp_path / "report.csv").loc[3, "conc conv2"] == pytest.approx(-0.4)
    # only falling: the verdict follows the numbers
    falling = pd.DataFrame(rows).assign(sid_per_pixel=lambda d: -d.epoch.astype(float) - d.layer_index)
    falling.to_csv(csv, index=False)
    layers = epoch_layers(csv)
    models = model_table([{"name": f"epoch_{e}"} for e in sid], {}, layers, {}, None)
    assert [v.word for v in build_report("epochs", tmp_path, models, layers, {}).verdicts] == ["INCONCLUSIVE"] * 2


def test_the_steps_check_passes_within_half_an_interval_and_fails_beyond() -> None:
    # seed 0's cells: 16 images x 2 layers; the doubled table moves one layer's mean by a fraction of the
    # half-width of that layer's 95 % interval (mean +- t * sd / sqrt(n), the images' interval on one seed)
    from scipy import stats

    rng = np.random.default_rng(0)
    cells = pd.DataFrame([{"model": "m", "layer": layer, "seed": seed, "image": i,
                           "sid_per_pixel": float(rng.normal(-1.0, 0.2))}
                          for seed in (0, 1) for layer in ("conv1", "conv2") for i in range(16)])
    own = cells[(cells.seed == 0) & (cells.layer == "conv2")].sid_per_pixel
    half = stats.t.ppf(0.975, len(own) - 1) * own.std(ddof=1) / np.sqrt(len(own))

    def moved_by(fraction: float) -> str:
        doubled = cells[cells.seed == 0].drop(columns="seed").copy()
        doubled.loc[doubled.layer == "conv2", "sid_per_pixel"] += fraction * half
        return steps_check(cells, doubled, seed=0)

    assert "PASSED" in moved_by(0.0) and "0.00 of half" in moved_by(0.0)
    assert "PASSED" in moved_by(0.9) and "at m conv2" in moved_by(0.9)
    assert "FAILED" in moved_by(1.1) and "1.10 of half" in moved_by(1.1)
    assert "not run (x is missing)" in steps_check(cells, None, seed=0, missing="x is missing")
    other = cells[cells.seed == 0].assign(model="other")
    assert "FAILED" in steps_check(cells, other, seed=0)  # nothing in common: nothing was checked


def _null_study(tmp_path: Path, tiny: bool, min_accuracy: float | None = 0.95):
    """experiment=null_shapes composed as train.py does, optionally shrunk to seconds (tiny data, 1 epoch,
    4 images, 5 SID steps, 2 seeds: mechanics only; the full one is the protocol's)."""
    from infoflow.studies.study import StudyTask

    overrides = ["experiment=null_shapes", f"paths.output_dir={tmp_path}", "logger=csv"]
    if min_accuracy is None:
        overrides.append("task.min_accuracy=null")
    else:
        overrides.append(f"task.min_accuracy={min_accuracy}")
    study = compose("train", overrides=overrides, return_hydra_config=True)
    name_plugins(study, study.hydra.runtime.choices)
    with open_dict(study):
        del study["hydra"]  # as train.py sees it
    if tiny:
        study.task.seeds = [0, 1]
        study.task.common = {"data.num_train": 64, "data.num_val": 16, "data.num_test": 32, "data.batch_size": 16,
                             "callbacks": "none"}
        for arm in ("arm_a", "arm_b"):
            study.task.stages[arm].overrides["trainer.max_epochs"] = 1
        lw = study.task.stages.layerwise.overrides
        lw["analysis.num_images"], lw["analysis.sid.steps"] = 4, 5
        lw["analysis.delta_f2.images"], lw["analysis.delta_f2.samples"] = 4, 2
        lw["analysis.layers"] = ["conv1", "conv4"]
    return StudyTask(study)


def _run_null(tmp_path: Path, tiny: bool) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        if tiny:  # 1 epoch on 64 images cannot pass the gate: the study stops before any SID
            with pytest.raises(AccuracyGateError, match=r"arm arm_a \(stage arm_a, seed 0\) reached test accuracy"):
                _null_study(tmp_path, tiny, 0.999).run()
            assert not (tmp_path / "layerwise").exists() and read_done(tmp_path / "arm_b" / "seed_1")
        metrics = _null_study(tmp_path, tiny, None if tiny else 0.95).run()
    assert set(metrics) == {f"{a}/seed_{s}/accuracy" for a in ("arm_a", "arm_b") for s in ((0, 1) if tiny else (0, 1, 2))}
    text = (tmp_path / "report.md").read_text()
    verdicts = [line for line in text.splitlines() if line.startswith("- **Fig. 5a")]
    assert len(verdicts) == 1 and ": INCONCLUSIVE." in verdicts[0], verdicts  # the null study decides nothing
    for s in (0, 1):  # each arm and seed trained in its own directory, arm_b with its offset seed
        assert (tmp_path / "arm_b" / f"seed_{s}" / "model.pt").is_file()
    layers = pd.read_csv(tmp_path / "report_layers.csv")
    assert (layers.seeds == (2 if tiny else 3)).all() and (layers.images == (4 if tiny else 16)).all()


def test_the_null_study_end_to_end_tiny(tmp_path: Path) -> None:
    _run_null(tmp_path, tiny=True)


@pytest.mark.slow
def test_the_null_study_is_inconclusive_for_every_sid_claim(tmp_path: Path) -> None:
    _run_null(tmp_path, tiny=False)  # the protocol's budget: about 30 min on 2 idle cores
