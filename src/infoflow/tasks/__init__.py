"""`train.py` tasks by name: each is ``run(cfg) -> dict of final metrics``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from infoflow.registry import Registry
from infoflow.utils.cache import using_cache_dir

TASKS: Registry[Callable[[DictConfig], dict[str, Any]]] = Registry("task")

#: modules whose import registers the tasks
_TASK_MODULES = (
    "infoflow.tasks.classifier",
    "infoflow.tasks.readout",
    "infoflow.tasks.decoder",
    "infoflow.tasks.prune",
    "infoflow.tasks.distill",
)


def run_task(cfg: DictConfig) -> dict[str, Any]:
    for module in _TASK_MODULES:
        importlib.import_module(module)
    with using_cache_dir(cfg.paths.cache_dir):  # one setting moves every cache, the default weights too
        return TASKS.get(cfg.task.name)(cfg)
