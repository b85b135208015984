"""The stages of a study: each one a ``train.py`` task or an ``evaluate.py`` analysis, run in order.

A stage is a mapping in ``task.stages``::

    original:                    # the stage's name: its run directory is <study dir>/original
      kind: train                # train (a train.py task) | evaluate (an evaluate.py analysis) | robustness
      overrides:                 # config group choices and values, as on the command line
        task: classifier
        trainer.max_epochs: 3
        analysis.compare: [...]  # lists and mappings are set after composition

``task.common`` holds overrides applied to every stage first (the data, the trainer; a null value leaves the
stage's own, and keys of a group only the other primary config has are skipped), then the stage's own, then
the study's command line (`command_line`: ``python train.py experiment=<study> trainer=gpu`` trains every
stage on the GPU; ``experiment``, ``task.*``, ``seed`` and ``hydra.*`` stay the study's). A finished stage
writes ``done.json`` (its final metrics, wall time and the fingerprint of its resolved config) into its
directory; `run_stages` skips such stages, so rerunning an interrupted study in the same directory resumes
at the first stage that did not finish. `check_stages` composes and checks every stage before the first runs.
A stage whose config changed since it finished runs again, and so does every stage that waits for one that
ran. A ``train`` stage resumes its own fit from its last checkpoint. With ``jobs`` > 1, stages whose
predecessors have finished run at once, each in its own process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from infoflow.cli.plugins import name_plugins
from infoflow.cli.settings import check_config
from infoflow.errors import ConfigError, DataError, UserError
from infoflow.utils.cache import digest as config_hash
from infoflow.utils.checkpoint import atomic_write
from infoflow.utils.progress import UnitProgress

log = logging.getLogger(__name__)

#: stage kind -> the primary config its stage config is composed from
PRIMARY = {"train": "train", "evaluate": "evaluate", "robustness": "evaluate"}
#: config groups: a plain value for one of these keys selects an option (``model: vgg16``)
GROUPS = ("model", "data", "trainer", "logger", "callbacks", "paths", "task", "analysis", "method",
          "hparams_search", "experiment")
#: the groups (and their values) only one primary config has: ``task.common`` keys of them skip the other
ONLY = {"train": ("callbacks", "task", "ckpt_path", "hparams_search"), "evaluate": ("analysis", "method")}
#: the keys of the study's own command line that its stages do not take (`command_line`)
STUDY_OWN = ("experiment", "task", "seed", "hydra")
DONE = "done.json"
_PLAIN = re.compile(r"^[\w./:@+-]+$")


def _override_value(value: Any) -> str:
    """`value` in Hydra's override syntax (strings quoted unless plain)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if _PLAIN.match(text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def stage_spec(study: DictConfig, name: str) -> DictConfig:
    """The stage `name` of ``study.task.stages``, checked."""
    stages = study.task.stages
    if name not in stages:
        raise ConfigError(f"unknown stage {name!r}; the study's stages are: {', '.join(stages)}")
    spec = stages[name]
    if spec.get("kind") not in PRIMARY:
        raise ConfigError(f"stage {name}: kind must be one of {', '.join(PRIMARY)}, got {spec.get('kind')!r}")
    return spec


def stage_dir(study: DictConfig, name: str, seed: int | None = None) -> Path:
    """``<study dir>/<name>``, or ``<study dir>/<name>/seed_<seed>`` for one replicate seed."""
    out = Path(study.paths.output_dir) / name
    return out if seed is None else out / f"seed_{seed}"


def study_seeds(study: DictConfig) -> list[int | None]:
    """``task.seeds`` (each arm trained once per seed), or ``[None]``: one run with the study's ``seed``."""
    seeds = study.task.get("seeds")
    if seeds is None:
        return [None]
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"task.seeds={seeds!r}: a list of distinct integers, e.g. [0, 1, 2], or null")
    return seeds


def seeded(value: Any, study: DictConfig, seed: int | None) -> Any:
    """`value` with every path into a stage's directory redirected to that stage's ``seed_<seed>`` directory."""
    if seed is None:
        return value
    if isinstance(value, dict):
        return {k: seeded(v, study, seed) for k, v in value.items()}
    if isinstance(value, list):
        return [seeded(v, study, seed) for v in value]
    if isinstance(value, str):
        for name in study.task.stages:
            prefix = f"{stage_dir(study, name)}/"
            if value.startswith(prefix) and not value.startswith(f"{prefix}seed_"):
                return f"{stage_dir(study, name, seed)}/{value[len(prefix):]}"
    return value


def run_seed(study: DictConfig, spec: DictConfig, seed: int | None) -> int:
    """The global seed a stage runs with: replicate `seed` (or the study's ``seed``) plus the stage's
    ``seed_offset`` (default 0: arms share their replicate seeds; the null study's second arm differs)."""
    return int(study.seed if seed is None else seed) + int(spec.get("seed_offset") or 0)


def command_line(overrides: Sequence[str] | None = None, study: DictConfig | None = None) -> list[str]:
    """The study command line's overrides that every stage takes too (`overrides`, default those of the
    ``train.py`` run that made `study`, none for a config composed otherwise): all but the study's own
    (``experiment``, ``task.*``, ``seed``, ``hydra.*``), e.g. ``trainer=gpu``, ``data.root=...``."""
    if overrides is None:
        overrides = []
        if HydraConfig.initialized() and study is not None:
            hydra = HydraConfig.get()
            ran_in = OmegaConf.select(hydra, "runtime.output_dir", default=None)  # missing after compose()
            if ran_in is not None and Path(str(ran_in)).resolve() == Path(str(study.paths.output_dir)).resolve():
                overrides = list(hydra.overrides.task)
    return [o for o in overrides if _top_key(o.split("=", 1)[0]) not in STUDY_OWN]


def _top_key(key: str) -> str:
    """The first component of an override's key (``+trainer.devices`` -> ``trainer``, ``data@x`` -> ``data``)."""
    return key.lstrip("+~").split("@")[0].split(".")[0]


def stage_config(study: DictConfig, name: str, seed: int | None = None, cli: Sequence[str] | None = None) -> DictConfig:
    """The composed config of stage `name` for replicate `seed` (None: the study's own seed, in the stage's
    directory): ``task.common``, then the stage's overrides, then the study's command line (`command_line`;
    `cli` replaces it); needs an initialised Hydra, as inside ``train.py``."""
    spec = stage_spec(study, name)
    common = OmegaConf.to_container(study.task.get("common") or OmegaConf.create({}), resolve=True)
    primary = PRIMARY[spec.kind]
    foreign = tuple(g for p, groups in ONLY.items() if p != primary for g in groups)
    merged = {k: v for k, v in common.items()  # null in common: leave the stage's own value
              if v is not None and _top_key(k) not in foreign}
    merged.update(OmegaConf.to_container(spec.get("overrides") or OmegaConf.create({}), resolve=True))
    merged = seeded(merged, study, seed)
    plain, structured = [], {}
    for key, value in merged.items():
        if isinstance(value, (list, dict)):
            structured[key] = value
        elif key.lstrip("+~").split("@")[0] in GROUPS:
            plain.append(f"{key}={'null' if value is None else value}")
        else:
            plain.append(f"{key}={_override_value(value)}")
    out = stage_dir(study, name, seed)
    try:
        given = [o for o in command_line(cli, study) if _top_key(o.split("=", 1)[0]) not in foreign]
        cfg = compose(primary, overrides=[*plain, *given, f"paths.output_dir={_override_value(str(out))}",
                                          f"seed={run_seed(study, spec, seed)}"], return_hydra_config=True)
    except Exception as err:  # Hydra's composition errors: a mistyped key or option in the study config
        raise ConfigError(f"stage {name} of the study does not compose: {err}") from err
    name_plugins(cfg, cfg.hydra.runtime.choices)  # as the entry points do: plug-ins named by their choice
    with open_dict(cfg):
        del cfg["hydra"]
    for key, value in structured.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    if spec.kind == "train" and cfg.get("callbacks") and cfg.callbacks.get("model_checkpoint"):
        cfg.ckpt_path = "last"  # an interrupted fit goes on from its last checkpoint
    return cfg


def check_stages(study: DictConfig) -> None:
    """Compose every stage of ``study.task.stages`` and run `check_config` on it, so that a bad override in any
    stage stops the study before its first stage runs. Files under the study's folder (what earlier stages
    write, e.g. ``weights: ${paths.output_dir}/original/model.pt``) count as present."""
    for name in study.task.stages:
        cfg = stage_config(study, name)
        try:
            check_config(cfg, produced=study.paths.output_dir)
        except UserError as err:
            kind = DataError if isinstance(err, DataError) else ConfigError
            raise kind(f"task.stages.{name} (stage {name} of the study): {err}") from None


def read_done(directory: str | Path) -> dict[str, Any] | None:
    """The ``done.json`` record of a finished stage, or None."""
    path = Path(directory) / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonable(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {}
    for key, value in (metrics or {}).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            out[str(key)] = str(value)
    return out


def _run_in_worker(
    runner: Callable[[str, DictConfig], Mapping[str, Any] | None], name: str, cfg: DictConfig, log_file: Path,
    threads: int,
) -> tuple[Mapping[str, Any] | None, float]:
    """One stage in a worker process: ``threads`` intra-op threads, its stdout and stderr (file descriptors 1
    and 2, so C-level output too) appended to `log_file`; its metrics and wall time in seconds."""
    import torch

    torch.set_num_threads(threads)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    start = time.perf_counter()
    try:
        return runner(name, cfg), time.perf_counter() - start
    except BaseException:
        traceback.print_exc()  # into the stage's log too; the parent raises the error itself
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _waits_for(names: list[str], after: Callable[[str], list[str]] | None) -> Callable[[str], list[str]]:
    """`after`, or by default every earlier name (the stages in order)."""
    return after or (lambda name: names[: names.index(name)])


def plan_stages(
    names: list[str],
    directory: Callable[[str], Path],
    config: Callable[[str], DictConfig | ListConfig],
    after: Callable[[str], list[str]] | None = None,
    ran: set[str] | None = None,
) -> tuple[dict[str, tuple[DictConfig | ListConfig, str]], dict[str, dict[str, Any]], list[str]]:
    """Which of the stages `names` run: each one's (config, fingerprint), the records of the finished ones
    that are skipped, and the names that run (in order). A stage runs when it has no ``done.json`` with its
    config's fingerprint, or when a stage it depends on (`after`; default every earlier name) runs, here or
    (`ran`) in an earlier call."""
    earlier = _waits_for(names, after)
    runs: list[str] = []
    configs, skipped = {}, {}
    will = set(ran or ())
    for name in names:
        cfg = config(name)
        fingerprint = config_hash(OmegaConf.to_container(cfg, resolve=False))
        configs[name] = (cfg, fingerprint)
        done = read_done(directory(name))
        upstream = [d for d in earlier(name) if d in will]
        if done is not None and done.get("fingerprint") == fingerprint and not upstream:
            skipped[name] = done
            continue
        if done is not None:
            reason = f"{upstream[0]} runs again" if upstream else "its settings changed"
            print(f"[study] stage {name}: runs again ({reason})")
        runs.append(name)
        will.add(name)
    return configs, skipped, runs


def run_stages(
    names: list[str],
    directory: Callable[[str], Path],
    config: Callable[[str], DictConfig | ListConfig],
    runner: Callable[[str, DictConfig], Mapping[str, Any] | None],
    progress: UnitProgress | None = None,
    *,
    after: Callable[[str], list[str]] | None = None,
    ran: set[str] | None = None,
    jobs: int = 1,
    threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """Run the stages `names`, skipping finished ones (`plan_stages`); return each stage's ``done.json`` record.

    Args:
        directory: stage name -> its run directory.
        config: stage name -> its composed config (fingerprinted: a changed config reruns the stage).
        runner: ``runner(name, cfg)`` runs one stage and returns its final metrics.
        progress: counts the stages, run or skipped, across calls (a study's bar line follows each stage's
            last line; default: these stages alone).
        after: stage name -> the names it waits for (default: every earlier name, i.e. in order); a stage
            that runs makes those after it run again.
        ran: the names that ran in earlier calls (their dependants run again); the names run here are added.
        jobs: 1 runs the stages in this process, in order. More runs up to `jobs` stages at once, each in a
            fresh (spawned) process with `threads` intra-op threads and its output in ``<its directory>/stage.log``;
            `runner` must then be picklable. After a failure no stage starts, the running ones finish, and
            the first error is raised.
    A stage that raises leaves no ``done.json``: rerunning resumes at that stage.
    """
    configs, records, runs = plan_stages(names, directory, config, after, ran)
    progress = progress or UnitProgress(len(names))
    for name in names:
        if name in records:
            log.info("stage %s: done before (%s), skipped", name, directory(name) / DONE)
            print(f"[study] stage {name}: already done, skipped ({directory(name) / DONE})  {progress.finished()}")

    def finish(name: str, metrics: Mapping[str, Any] | None, seconds: float) -> None:
        cfg, fingerprint = configs[name]
        out = directory(name)
        record = {"stage": name, "metrics": _jsonable(metrics), "seconds": round(seconds, 2),
                  "fingerprint": fingerprint, "output_dir": str(out)}
        atomic_write(out / DONE, lambda tmp, r=record: tmp.write_text(json.dumps(r, indent=2)))
        print(f"[study] stage {name}: done in {record['seconds']:.1f} s  {progress.finished()}", flush=True)
        records[name] = record
        if ran is not None:
            ran.add(name)

    if jobs <= 1:
        for name in runs:
            print(f"[study] stage {name}: running into {directory(name)}")
            start = time.perf_counter()
            metrics = runner(name, configs[name][0])
            finish(name, metrics, time.perf_counter() - start)
    else:
        earlier = _waits_for(names, after)
        waits = {name: {d for d in earlier(name) if d in runs} for name in runs}
        _run_parallel(runs, waits, lambda n: configs[n][0], directory, runner, finish, jobs, threads)
    return dict(sorted(records.items(), key=lambda kv: names.index(kv[0])))


def _run_parallel(
    runs: list[str],
    waits: Mapping[str, set[str]],
    config: Callable[[str], DictConfig | ListConfig],
    directory: Callable[[str], Path],
    runner: Callable[[str, DictConfig], Mapping[str, Any] | None],
    finish: Callable[[str, Mapping[str, Any] | None, float], None],
    jobs: int,
    threads: int,
) -> None:
    """Run the stages `runs`, up to `jobs` at once in spawned processes, each once the stages it `waits` for
    have finished (`finish` is called in this process as each one ends); after a failure none starts, the
    running ones finish, and the first error is raised."""
    pending, running, done, error = list(runs), {}, set(), None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        while pending or running:
            while error is None and len(running) < jobs:
                ready = next((n for n in pending if waits[n] <= done), None)
                if ready is None:
                    break
                pending.remove(ready)
                log_file = directory(ready) / "stage.log"
                print(f"[study] stage {ready}: running into {directory(ready)} (output: {log_file})", flush=True)
                running[pool.submit(_run_in_worker, runner, ready, config(ready), log_file, threads)] = ready
            if not running:
                if error is None:
                    raise RuntimeError(f"stages {pending} wait for stages that never run: check `after`")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    metrics, seconds = future.result()
                except BaseException as err:  # noqa: BLE001 - kept, raised once the running stages finished
                    print(f"[study] stage {name}: failed; its output: {directory(name) / 'stage.log'}", flush=True)
                    error = error or err
                    continue
                finish(name, metrics, seconds)
                done.add(name)
    if error is not None:
        raise error
