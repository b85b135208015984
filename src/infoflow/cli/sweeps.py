"""Multirun check: every job of ``-m`` is composed and checked (`infoflow.cli.settings.check_config`) before
the first job starts, so a bad value of a sweep (``-m beta=1,abc``) stops the sweep at once, not after the
jobs before it ran. Registered in ``conf/hydra/default.yaml`` as a Hydra callback."""

from __future__ import annotations

from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from infoflow.cli.entry import UserErrorExit, user_error_message
from infoflow.cli.plugins import name_plugins
from infoflow.cli.settings import check_config


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The overrides of each job of the basic sweeper's multirun of `config` (its cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class CheckEveryJob(Callback):
    """``on_multirun_start``: compose and `check_config` every job; the first bad one raises its user error."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
            return  # another sweeper (e.g. Optuna) chooses its values as it runs
        loader = GlobalHydra.instance().config_loader()
        for overrides in job_overrides(config):
            cfg = loader.load_configuration(config.hydra.job.config_name, overrides, run_mode=RunMode.RUN)
            name_plugins(cfg, cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
            try:
                check_config(cfg)
            except Exception as err:
                message = user_error_message(err)
                if message is None:
                    raise
                # a SystemExit: Hydra turns a callback's exceptions into warnings and would run the jobs anyway
                raise UserErrorExit(f"{message} (in the job with {' '.join(overrides)})") from err
