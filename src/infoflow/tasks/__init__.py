"""`train.py` tasks by name: each is a `TrainingTask` subclass that `run_task` runs in the one skeleton."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from infoflow.registry import Registry
from infoflow.utils.cache import using_cache_dir

if TYPE_CHECKING:  # the skeleton imports Lightning: not needed to fail fast on a bad command line
    from infoflow.tasks.skeleton import TrainingTask

TASKS: Registry[type[TrainingTask]] = Registry("task")


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """Run the task ``cfg.task.name`` (see `infoflow.tasks.skeleton`); return its final metrics."""
    from infoflow.tasks.skeleton import run_training

    task = TASKS.get(cfg.task.name)(cfg)
    run = getattr(task, "run", None)  # a task that is no single fit (task=study) runs itself
    with using_cache_dir(cfg.paths.cache_dir):  # one setting moves every cache, the default weights too
        return run() if run is not None else run_training(task)


from infoflow.tasks import autoencoder, classifier, decoder, default_weights, distill, prune, readout  # noqa: E402,F401
