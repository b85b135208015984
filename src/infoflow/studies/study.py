"""``python train.py experiment=<study>``: a comparative study of the SID/RU paper in one command (``task=study``).

The study runs its stages in order (`infoflow.studies.stages`: each a train.py task or an evaluate.py
analysis, in ``<run dir>/<stage>``), then writes the comparison report (`infoflow.studies.report`) into its
run directory and W&B. Rerunning the same command with ``hydra.run.dir=<run dir>`` skips the finished
stages: an interrupted or failed study resumes at the stage that did not finish.

Config (``task``): ``study`` (the verdict rules), ``common`` (overrides of every stage), ``stages``,
``models`` (the compared networks: name, model, weights and the stage that trained them), ``report``
(``layerwise``: the stage whose layer-wise means are compared; ``source``: ``summary`` (an ``analysis=layerwise``
stage) or ``callback`` (a training stage's ``layerwise`` callback CSV, one model per evaluated epoch); ``robustness``: its stage or null;
``extras``: report column -> metric of a model's stage) and ``claims`` (settings of the verdict rules).
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from infoflow.builders import build_datamodule, build_loggers
from infoflow.errors import ConfigError, DataError, UserError
from infoflow.models.zoo import get_model
from infoflow.studies.report import build_report, epoch_layers, log_report, model_table, steps_check
from infoflow.studies.robustness import minimal_targeted_l2
from infoflow.studies.stages import check_stages, run_stages, seeded, stage_config, stage_dir, study_seeds
from infoflow.studies.verdicts import VERDICTS
from infoflow.tasks import TASKS
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.progress import UnitProgress
from infoflow.utils.tables import write_csv
from infoflow.utils.validation import check_jobs


def run_robustness(cfg: DictConfig, params: DictConfig) -> dict[str, Any]:
    """The robustness stage: `minimal_targeted_l2` of each of ``params.models`` on the first test images."""
    from infoflow.analyses.layerwise import first_images

    dm = build_datamodule(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = first_images(dm, int(params.num_images), device)
    images01, labels = dm.denormalize(batch["image"]), batch["label"]
    rows = []
    for m in params.models:
        model = get_model(m.model, weights=str(m.weights), num_classes=dm.num_classes, input_size=dm.input_size)
        result = minimal_targeted_l2(model.module.to(device), images01, labels, dm.mean, dm.std,
                                     top_k=int(params.top_k), c_values=list(params.c_values),
                                     steps=int(params.steps), lr=float(params.lr))
        rows.append({"model": m.name, "robustness_l2": result.mean_l2, "attack_success": result.success_rate})
        print(f"robustness of {m.name}: mean |eps|_2 {result.mean_l2:.4f} over "
              f"{result.success_rate:.0%} of {result.norms.numel()} (image, target) pairs")
    table = pd.DataFrame(rows)
    write_csv(table, Path(cfg.paths.output_dir) / "robustness.csv")
    return {f"{r.model}/robustness_l2": r.robustness_l2 for r in table.itertuples()}


class AccuracyGateError(UserError):
    """A classifier a study trained is below ``task.min_accuracy``: its layer-wise figures would compare
    untrained networks."""


def gate(cfg: DictConfig, records: dict[str, dict[str, Any]]) -> None:
    """Stop the study (`AccuracyGateError`) when a trained classifier of ``task.models`` is below
    ``task.min_accuracy`` on the test split; models in ``task.ungated`` (the pruned arms) are reported, not gated."""
    t = cfg.task
    floor = t.get("min_accuracy")
    if floor is None:
        return
    exempt = set(t.get("ungated") or [])
    arms = [(m.name, m.stage) for m in t.models if m.get("stage") and m.name not in exempt]
    if (t.get("report") or {}).get("source", "summary") == "callback":  # the epochs study: its training stage
        arms.append((t.report.layerwise, t.report.layerwise))
    for name, stage in arms:
        if t.stages[stage].kind != "train":
            continue
        for seed in study_seeds(cfg):
            acc = records.get(unit(stage, seed), {}).get("metrics", {}).get("test/acc")
            if acc is not None and float(acc) < float(floor):
                raise AccuracyGateError(
                    f"arm {name} (stage {stage}, seed {seed}) reached test accuracy {float(acc):.3f} < "
                    f"task.min_accuracy={float(floor)}: raise task.stages.{stage}.overrides.trainer.max_epochs "
                    f"(or data.num_train) and rerun; no SID was computed")


def stage_seeds(cfg: DictConfig, name: str) -> list[int | None]:
    """The seeds stage `name` runs with: its own ``seeds`` (a subset of ``task.seeds``, e.g. the steps check's
    ``[0]``) or every seed of ``task.seeds``."""
    seeds = study_seeds(cfg)
    own = cfg.task.stages[name].get("seeds")
    if own is None:
        return seeds
    if not set(own) <= set(seeds):
        raise ConfigError(f"task.stages.{name}.seeds={list(own)} must be a subset of task.seeds={seeds}")
    return list(own)


def unit(name: str, seed: int | None) -> str:
    """The record key of stage `name` run with replicate `seed`."""
    return name if seed is None else f"{name}/seed_{seed}"


def run_stage(kind: str, cfg: DictConfig, params: DictConfig | None = None) -> dict[str, Any] | None:
    """Run one stage's composed config `cfg` in-process (`kind`: ``train``, ``evaluate`` or ``robustness``,
    whose `params` are already redirected to its seed's models); its final metrics."""
    if kind == "train":
        from infoflow.tasks import run_task

        return run_task(cfg)
    if kind == "evaluate":
        from infoflow.analyses import run_analysis

        return run_analysis(cfg)
    assert params is not None, "a robustness stage needs its params"
    return run_robustness(cfg, params)


class StageRunner:
    """Runs one stage-seed unit of a study (picklable, for ``task.jobs`` > 1): ``runner(key, cfg)``, with
    `split` mapping each unit's key to its (stage, seed). What a unit needs of the study (its stage's kind, a
    robustness stage's parameters redirected to its seed) is resolved here, in the study's process: a spawned
    worker has no Hydra run to resolve ``${hydra:...}`` (e.g. ``paths.output_dir``) with."""

    def __init__(self, study: DictConfig, split: dict[str, tuple[str, int | None]]) -> None:
        self.kinds: dict[str, str] = {}
        self.params: dict[str, DictConfig] = {}
        for key, (name, seed) in split.items():
            spec = study.task.stages[name]
            self.kinds[key] = str(spec.kind)
            if spec.kind == "robustness":
                params = OmegaConf.to_container(spec.params, resolve=True)
                self.params[key] = OmegaConf.create(seeded(params, study, seed))

    def __call__(self, key: str, cfg: DictConfig) -> dict[str, Any] | None:
        return run_stage(self.kinds[key], cfg, self.params.get(key))


def same_seed_before(order: list[str], split: dict[str, tuple[str, int | None]], key: str) -> list[str]:
    """The units `key` waits for: the earlier units (in `order`) of its seed, and every earlier unit without
    one (a unit without a seed waits for all earlier units)."""
    seed = split[key][1]
    before = order[: order.index(key)]
    return [k for k in before if seed is None or split[k][1] in (seed, None)]


def study_jobs(cfg: DictConfig) -> tuple[int, int]:
    """``task.jobs`` resolved: (units run at once, intra-op threads of each). ``auto``: one per usable CPU core
    without CUDA (two one-thread processes beat one two-thread process on a 2-core CPU; docs/studies-protocol.md),
    one with CUDA (the units would share its one device); each unit gets this process's threads / jobs, at least 1."""
    value = check_jobs(cfg.task.get("jobs", 1), "task.jobs")
    if value == "auto":
        value = 1 if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    return value, max(1, torch.get_num_threads() // value)


def packing_line(unit_seconds: float, units: int, wall_seconds: float, jobs: int) -> str:
    """The line that says how well `units` that took `unit_seconds` (summed) filled `jobs` processes over
    `wall_seconds`: 1.0 when every process was busy all the time."""
    fill = unit_seconds / (jobs * wall_seconds) if wall_seconds > 0 else float("nan")
    return (f"[study] {units} units ran: {unit_seconds / 60:.1f} unit-minutes in {wall_seconds / 60:.1f} min wall "
            f"with {jobs} process{'es' if jobs > 1 else ''} at a time (the processes were busy {fill:.0%} of it)")


def resume_hint(cfg: DictConfig) -> str:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return shlex.join(["python", "train.py", *kept, f"hydra.run.dir={cfg.paths.output_dir}"])


@TASKS.register("study")
class StudyTask(TrainingTask):
    """Runs the study's stages, then its report (module docstring); not a fit of its own."""

    def check(self) -> None:
        t = self.cfg.task
        if t.study not in VERDICTS:
            raise ConfigError(f"task.study={t.study!r}: unknown study; valid: {', '.join(VERDICTS.names())}")
        if not t.stages:
            raise ConfigError("task.stages is empty: a study needs at least one stage")
        study_seeds(self.cfg)
        check_jobs(t.get("jobs", 1), "task.jobs")
        for name in t.stages:
            stage_seeds(self.cfg, name)
        if t.report.get("steps_check") and t.report.steps_check.stage not in t.stages:
            raise ConfigError(f"task.report.steps_check.stage={t.report.steps_check.stage!r} is not one of the "
                              f"stages: {', '.join(t.stages)}")
        if t.report.layerwise not in t.stages:
            raise ConfigError(f"task.report.layerwise={t.report.layerwise!r} is not one of the stages: {', '.join(t.stages)}")
        source = t.report.get("source", "summary")
        if source not in ("summary", "callback"):
            raise ConfigError(f"task.report.source={source!r}: valid: summary, callback")

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.check()
        check_stages(cfg)  # every stage's settings, before the first stage trains
        runs = {n: stage_seeds(cfg, n) for n in cfg.task.stages}
        order = [unit(n, s) for n in cfg.task.stages for s in runs[n]]
        split = {unit(n, s): (n, s) for n in cfg.task.stages for s in runs[n]}
        train = [k for k in order if cfg.task.stages[split[k][0]].kind == "train"]
        rest = [k for k in order if k not in train]
        jobs, threads = study_jobs(cfg)
        runner = StageRunner(cfg, split)
        directory = lambda key: stage_dir(cfg, *split[key])  # noqa: E731
        after = lambda key: same_seed_before(order, split, key)  # noqa: E731
        ran: set[str] = set()
        start = time.perf_counter()
        try:  # every classifier is trained and gated before any SID is computed
            config = lambda key: stage_config(cfg, *split[key])  # noqa: E731
            progress = UnitProgress(len(train) + len(rest))
            kw = {"after": after, "ran": ran, "jobs": jobs, "threads": threads}
            records = run_stages(train, directory, config, runner, progress, **kw)
            gate(cfg, records)
            records.update(run_stages(rest, directory, config, runner, progress, **kw))
            if ran:
                print(packing_line(sum(records[k]["seconds"] for k in ran), len(ran),
                                   time.perf_counter() - start, jobs))
        except AccuracyGateError:
            raise
        except BaseException:
            print(f"[study] stopped; the finished stages are kept. Resume with:\n  {resume_hint(cfg)}")
            raise
        return self.report(records)

    @property
    def from_callback(self) -> bool:
        """Whether the layer-wise tables come from the ``layerwise`` callback (``task.report.source``)."""
        return self.cfg.task.report.get("source", "summary") == "callback"

    def table_path(self, stage: str, seed: int | None) -> Path:
        """Where stage `stage` of seed `seed` writes its per-image layer-wise table."""
        where = stage_dir(self.cfg, stage, seed)
        return where / "callbacks" / "layerwise_images.csv" if self.from_callback else where / "layerwise.csv"

    def read_table(self, path: Path) -> pd.DataFrame:
        """A per-image layer-wise table at `path`, models named as in the report (``epoch_<N>`` from the callback)."""
        return epoch_layers(path) if self.from_callback else pd.read_csv(path)

    def cells(self) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        """The per-image layer-wise table of every seed (column ``seed``) and the compared models.

        ``task.report.source``: ``summary`` reads each seed's ``analysis=layerwise`` stage ``layerwise.csv``
        (models: ``task.models``); ``callback`` reads a training stage's ``callbacks/layerwise_images.csv``
        (models: its evaluated epochs ``epoch_<N>``, the last one credited with the stage's final metrics).
        """
        t = self.cfg.task
        stage, frames, callback = t.report.layerwise, [], self.from_callback
        for seed in study_seeds(self.cfg):
            path = self.table_path(stage, seed)
            if not path.is_file():
                raise DataError(f"{path} is missing: " + (f"stage {stage} ran without the layerwise callback "
                                "(callbacks=[default,layerwise])" if callback else
                                f"the layer-wise stage {stage} wrote no per-image table"))
            frames.append(self.read_table(path).assign(seed=0 if seed is None else seed))
        cells = pd.concat(frames, ignore_index=True)
        if not callback:
            return cells, OmegaConf.to_container(t.models, resolve=True)
        names = list(dict.fromkeys(cells.model))
        return cells, [{"name": n, "stage": stage if n == names[-1] else None} for n in names]

    def report(self, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.task
        out = Path(cfg.paths.output_dir)
        cells, compared = self.cells()
        tables = []
        for seed in study_seeds(cfg):
            s = 0 if seed is None else seed
            robustness = None
            if t.report.get("robustness"):
                robustness = pd.read_csv(stage_dir(cfg, t.report.robustness, seed) / "robustness.csv")
            own = {n: records.get(unit(n, seed), {}) for n in t.stages}
            means = cells[cells.seed == s].groupby(["model", "layer_index", "layer"], as_index=False).mean(
                numeric_only=True)
            tables.append(model_table(compared, own, means, dict(t.report.get("extras") or {}), robustness)
                          .assign(seed=s))
        models = pd.concat(tables, ignore_index=True)
        claims = OmegaConf.to_container(t.claims, resolve=True) if t.get("claims") else {}
        notes = list(t.report.get("notes") or [])
        steps = t.report.get("steps_check")
        if steps:
            seed = stage_seeds(cfg, steps.stage)[0]
            path = self.table_path(steps.stage, seed)
            doubled = self.read_table(path) if path.is_file() else None
            notes.append(steps_check(cells, doubled, 0 if seed is None else seed, missing=f"{path} is missing"))
        report = build_report(t.study, out, models, cells, claims, notes, OmegaConf.to_yaml(cfg, resolve=True))
        log_report(build_loggers(cfg), report, t.study)
        print(report.markdown)
        print(f"[study] report: {out / 'report.md'} (+ report.csv, report_layers.csv, report_*.png)")
        return {f"{r.model}/seed_{r.seed}/accuracy": r.accuracy for r in models.itertuples()}
