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

import shlex
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from infoflow.builders import build_datamodule, build_loggers
from infoflow.errors import ConfigError, DataError
from infoflow.models.zoo import get_model
from infoflow.studies.report import build_report, epoch_layers, log_report, model_table
from infoflow.studies.robustness import minimal_targeted_l2
from infoflow.studies.stages import check_stages, run_stages, stage_config, stage_dir
from infoflow.studies.verdicts import VERDICTS
from infoflow.tasks import TASKS
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.tables import write_csv


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


def run_stage(name: str, cfg: DictConfig, spec: DictConfig) -> dict[str, Any] | None:
    """Run one stage's composed config `cfg` (kind ``spec.kind``) in-process; its final metrics."""
    if spec.kind == "train":
        from infoflow.tasks import run_task

        return run_task(cfg)
    if spec.kind == "evaluate":
        from infoflow.analyses import run_analysis

        return run_analysis(cfg)
    return run_robustness(cfg, spec.params)


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
        if t.report.layerwise not in t.stages:
            raise ConfigError(f"task.report.layerwise={t.report.layerwise!r} is not one of the stages: {', '.join(t.stages)}")
        source = t.report.get("source", "summary")
        if source not in ("summary", "callback"):
            raise ConfigError(f"task.report.source={source!r}: valid: summary, callback")

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.check()
        check_stages(cfg)  # every stage's settings, before the first stage trains
        names = list(cfg.task.stages)
        try:
            records = run_stages(names, lambda n: stage_dir(cfg, n), lambda n: stage_config(cfg, n),
                                 lambda n, c: run_stage(n, c, cfg.task.stages[n]))
        except BaseException:
            print(f"[study] stopped; the finished stages are kept. Resume with:\n  {resume_hint(cfg)}")
            raise
        return self.report(records)

    def layers(self) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        """The layer-wise table of the report's layer-wise stage and the compared models.

        ``task.report.source``: ``summary`` reads an ``analysis=layerwise`` stage's ``layerwise_summary.csv``
        (models: ``task.models``); ``callback`` reads a training stage's ``callbacks/layerwise.csv`` (models: its
        evaluated epochs, the last one credited with the stage's final metrics).
        """
        t = self.cfg.task
        stage = t.report.layerwise
        if t.report.get("source", "summary") == "callback":
            path = stage_dir(self.cfg, stage) / "callbacks" / "layerwise.csv"
            if not path.is_file():
                raise DataError(f"{path} is missing: stage {stage} ran without the layerwise callback "
                                "(callbacks=[default,layerwise])")
            layers = epoch_layers(path)
            names = list(dict.fromkeys(layers.model))
            return layers, [{"name": n, "stage": stage if n == names[-1] else None} for n in names]
        summary = stage_dir(self.cfg, stage) / "layerwise_summary.csv"
        if not summary.is_file():
            raise DataError(f"{summary} is missing: the layer-wise stage {stage} wrote no summary")
        return pd.read_csv(summary), OmegaConf.to_container(t.models, resolve=True)

    def report(self, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.task
        out = Path(cfg.paths.output_dir)
        layers, compared = self.layers()
        robustness = None
        if t.report.get("robustness"):
            robustness = pd.read_csv(stage_dir(cfg, t.report.robustness) / "robustness.csv")
        models = model_table(compared, records, layers, dict(t.report.get("extras") or {}), robustness)
        claims = OmegaConf.to_container(t.claims, resolve=True) if t.get("claims") else {}
        report = build_report(t.study, out, models, layers, claims, list(t.report.get("notes") or []),
                              OmegaConf.to_yaml(cfg, resolve=True))
        log_report(build_loggers(cfg), report, t.study)
        print(report.markdown)
        print(f"[study] report: {out / 'report.md'} (+ report.csv, report_layers.csv, report_*.png)")
        return {f"{r.model}/accuracy": r.accuracy for r in models.itertuples()}
