"""The one skeleton every ``train.py`` task runs in; a task supplies only what differs (`TrainingTask`).

`run_training`: check the settings -> seed -> data -> the task's LightningModule -> trainer (with the task's
callbacks) -> `before_fit` -> fit (``ckpt_path=last`` resumes) -> test (`TrainingTask.metrics`) -> `save`
on rank 0 -> loggers closed (W&B runs finished, so that the next run of a multirun starts its own). The
run is timed, and a failure (other than a user error, which the entry point prints) or an interruption
is logged before it propagates.

Resuming is Lightning's own ``ckpt_path="last"`` (the newest ``last*.ckpt`` of the ModelCheckpoint callback,
which writes into ``<run dir>/checkpoints``), the same in every task; when there is none yet, the run
starts fresh and says so in one line. SIGTERM and SIGINT end the run with `Interrupted`, whose message is
the command that resumes it.
"""

from __future__ import annotations

import logging
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from infoflow.builders import build_datamodule, build_trainer, log_config
from infoflow.data.base import ImageDataModule
from infoflow.errors import ConfigError, DataError, UserError
from infoflow.utils.interrupt import Interrupted, lightning_stops_on_sigterm
from infoflow.utils.validation import check_common

log = logging.getLogger(__name__)


class TrainingTask:
    """A ``train.py`` task: the hooks `run_training` calls, in that order. Override what differs.

    Args:
        cfg: the composed ``train.yaml`` config.
    """

    #: run `trainer.test` after the fit; False: the final metrics are the trainer's callback metrics
    test: bool = True

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def check(self) -> None:
        """Refuse bad task settings with a `ConfigError`, before any work."""

    def build_module(self, dm: ImageDataModule) -> pl.LightningModule:
        """The LightningModule to train (build the zoo models here)."""
        raise NotImplementedError

    def trainer_overrides(self) -> dict[str, Any]:
        """Trainer arguments that replace the config's ``trainer.*``."""
        return {}

    def callbacks(self) -> list[pl.Callback]:
        """Callbacks called before the configured ones."""
        return []

    def before_fit(self, trainer: pl.Trainer, module: pl.LightningModule, dm: ImageDataModule, resuming: bool) -> None:
        """Work between building the trainer and fitting (`resuming`: a checkpoint will be restored)."""

    def fit(self, trainer: pl.Trainer, module: pl.LightningModule, dm: ImageDataModule, ckpt_path: str | None) -> None:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    def metrics(self, trainer: pl.Trainer, module: pl.LightningModule, dm: ImageDataModule) -> dict[str, Any]:
        """The final metrics: the test split's (`test`), else the last logged ones. On every process."""
        if self.test:
            return dict(trainer.test(module, datamodule=dm)[0])
        return {k: float(v) for k, v in trainer.callback_metrics.items()}

    def save(self, trainer: pl.Trainer, module: pl.LightningModule, metrics: dict[str, Any]) -> None:
        """Write the results into ``cfg.paths.output_dir`` and print where they are (rank 0 only)."""


def resume_from(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """The ``ckpt_path`` for ``trainer.fit``: ``last`` (Lightning's: the newest ``last*.ckpt`` of the checkpoint
    callbacks) when there is one, None (start fresh, said in one line) when there is none yet, or a file."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if not callbacks:
            raise ConfigError("ckpt_path=last resumes from the run's checkpoints, but checkpointing is off: "
                              "use callbacks=default")
        # Lightning's own search for ckpt_path="last" (it only warns when there is none)
        if any(cb._find_last_checkpoints(trainer) for cb in callbacks):
            return "last"
        if trainer.is_global_zero:
            log.info("ckpt_path=last: no checkpoint in %s yet, starting fresh", callbacks[0].dirpath)
        return None
    if not Path(ckpt_path).is_file():
        raise DataError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(ckpt_path)


def resume_command(cfg: DictConfig) -> str:
    """The command that resumes this run: its overrides, ``ckpt_path=last`` and its run directory."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ["..."]
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("ckpt_path=", "hydra.run.dir="))]
    return shlex.join(["python", "train.py", *kept, "ckpt_path=last", f"hydra.run.dir={cfg.paths.output_dir}"])


def close_loggers(trainer: pl.Trainer, success: bool) -> None:
    """Finish the W&B runs (rank 0; only those that were started)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=0 if success else 1)


def _interrupted(trainer: pl.Trainer | None, err: BaseException) -> int | None:
    """The signal that stopped the run, or None when `err` is no interruption."""
    if isinstance(err, Interrupted):
        return err.signum
    if trainer is not None and trainer.received_sigterm:
        return int(signal.SIGTERM)  # Lightning stopped on SIGTERM (SIGTERMException, a SystemExit)
    if isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and trainer is not None and trainer.interrupted):
        return int(signal.SIGINT)  # Lightning turns Ctrl-C into sys.exit(1)
    return None


def run_training(task: TrainingTask) -> dict[str, Any]:
    """Run `task` in the skeleton (module docstring); return its final metrics."""
    cfg, name, start = task.cfg, task.cfg.task.name, time.perf_counter()
    trainer: pl.Trainer | None = None
    success = False
    try:
        check_common(cfg)
        task.check()
        pl.seed_everything(cfg.seed, workers=True)
        dm = build_datamodule(cfg)
        module = task.build_module(dm)
        trainer = build_trainer(cfg, **task.trainer_overrides())
        trainer.callbacks[0:0] = task.callbacks()
        log_config(trainer, cfg)
        ckpt_path = resume_from(cfg.ckpt_path, trainer)
        with lightning_stops_on_sigterm():
            task.before_fit(trainer, module, dm, resuming=ckpt_path is not None)
            task.fit(trainer, module, dm, ckpt_path)
            if trainer.received_sigterm:
                raise Interrupted(signal.SIGTERM)
            metrics = task.metrics(trainer, module, dm)
        if trainer.received_sigterm:
            raise Interrupted(signal.SIGTERM)
        if trainer.is_global_zero:
            task.save(trainer, module, metrics)
        success = True
        log.info("task=%s done in %.1f s", name, time.perf_counter() - start)
        return metrics
    except BaseException as err:
        seconds, signum = time.perf_counter() - start, _interrupted(trainer, err)
        if signum is None:
            if not isinstance(err, UserError):  # a user error is printed as one line by the entry point
                log.error("task=%s failed after %.1f s: %s: %s", name, seconds, type(err).__name__, err)
            raise
        log.warning("task=%s interrupted by %s after %.1f s", name, signal.Signals(signum).name, seconds)
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name} after {seconds:.1f} s. "
                                  f"Resume with:\n  {resume_command(cfg)}") from err
    finally:
        if trainer is not None:
            close_loggers(trainer, success)
