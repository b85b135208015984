"""The one training skeleton: an interrupted task (SIGTERM) resumes with ckpt_path=last; a first run starts fresh."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config

from infoflow.tasks import TASKS, run_task
from infoflow.tasks.skeleton import TrainingTask
from infoflow.utils.interrupt import Interrupted

#: tiny shapes data: 2 training steps per epoch
TINY = ["data.image_size=32", "data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
        "logger=csv", "callbacks.progress_bar=null"]


def task_overrides(task: str, weights: Path, tmp_path: Path, epochs: int) -> list[str]:
    """Overrides of a tiny run of `task` for `epochs` epochs (prune: fine-tuning epochs of one round)."""
    return {
        "classifier": ["task=classifier", "weights=none", f"trainer.max_epochs={epochs}"],
        "distill": ["task=distill", "weights=none", f"task.teacher.weights={weights}", f"trainer.max_epochs={epochs}"],
        "prune": ["task=prune", f"weights={weights}", "task.rounds=1", f"task.finetune_epochs={epochs}"],
        "decoder": ["task=decoder", f"weights={weights}", "layer=conv2", f"task.decoder_dir={tmp_path / 'decoders'}",
                    f"trainer.max_epochs={epochs}"],
        "readout": ["task=readout", "weights=none", "task.num_heatmaps=0", "task.estimator_samples=16",
                    f"trainer.max_epochs={epochs}"],
    }[task]


def run(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config("train", [*TINY, *overrides, f"paths.output_dir={tmp_path}",
                                   f"paths.cache_dir={tmp_path / 'cache'}"])
    return run_task(cfg)


def test_every_task_plugs_into_the_skeleton() -> None:
    assert {"autoencoder", "classifier", "decoder", "distill", "prune", "readout"} <= set(TASKS.names())
    assert all(issubclass(TASKS.get(name), TrainingTask) for name in TASKS.names())


class SigtermAfterFirstEpoch(pl.Callback):
    """Sends this process SIGTERM at the end of the first epoch (as SLURM would), after its checkpoint."""

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler only sets trainer.received_sigterm


@pytest.mark.parametrize("task", ["classifier", "distill", "prune", "decoder", "readout"])
def test_an_interrupted_task_resumes_with_ckpt_path_last(task: str, tmp_path: Path, random_shapesnet: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="infoflow.tasks.skeleton")
    overrides = [*task_overrides(task, random_shapesnet, tmp_path, 2), "ckpt_path=last",
                 "+callbacks.sigterm._target_=test_tasks_skeleton.SigtermAfterFirstEpoch"]
    with pytest.raises(Interrupted) as info:
        run(tmp_path, *overrides)
    assert info.value.signum == signal.SIGTERM
    assert str(info.value).endswith(f"ckpt_path=last hydra.run.dir={tmp_path}")
    assert "no checkpoint in" in caplog.text and "starting fresh" in caplog.text
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (first["epoch"], first["global_step"]) == (0, 2)
    assert not list(tmp_path.glob("*.pt"))  # nothing saved: the task did not finish

    caplog.clear()
    run(tmp_path, *overrides)
    assert "starting fresh" not in caplog.text
    last = max((tmp_path / "checkpoints").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 4)  # the second epoch only
    logged = pd.read_csv(tmp_path / "csv" / "version_1" / "metrics.csv")
    assert logged["epoch"].dropna().min() == 1  # epoch 0 was not trained again
