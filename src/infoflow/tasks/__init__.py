"""`train.py` tasks by name: each is a `TrainingTask` subclass that `run_task` runs in the one skeleton."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from infoflow.registry import Registry

if TYPE_CHECKING:  # the skeleton imports Lightning: not needed to fail fast on a bad command line
    from infoflow.tasks.skeleton import TrainingTask

TASKS: Registry[type[TrainingTask]] = Registry("task")

#: modules whose import registers the tasks
_TASK_MODULES = (
    "infoflow.tasks.classifier",
    "infoflow.tasks.readout",
    "infoflow.tasks.decoder",
    "infoflow.tasks.prune",
    "infoflow.tasks.distill",
)


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """Run the task ``cfg.task.name`` (see `infoflow.tasks.skeleton`); return its final metrics."""
    from infoflow.tasks.skeleton import run_training

    for module in _TASK_MODULES:
        importlib.import_module(module)
    return run_training(TASKS.get(cfg.task.name)(cfg))
