"""`train.py` tasks by name: each is ``run(cfg) -> dict of final metrics``.

Each task module registers its ``run`` with ``@TASKS.register(name)``; importing this package imports
them all, so `TASKS` is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from infoflow.registry import Registry

TASKS: Registry[Callable[[DictConfig], dict[str, Any]]] = Registry("task")


def run_task(cfg: DictConfig) -> dict[str, Any]:
    return TASKS.get(cfg.task.name)(cfg)


from infoflow.tasks import classifier, decoder, default_weights, distill, prune, readout  # noqa: E402,F401
