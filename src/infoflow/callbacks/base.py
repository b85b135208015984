"""`EvaluationCallback`: the base of the evaluation callbacks, which measure the network being trained every
few epochs on a fixed, seeded subset (`subset`), on the schedule of `schedule`, gather their rows from every
process (`rows.Rows`) and write them as CSV in the run directory (rank 0)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch

from infoflow.callbacks.schedule import is_due
from infoflow.callbacks.subset import SPLITS, load_subset, shard
from infoflow.data.base import ImageDataModule
from infoflow.errors import ConfigError
from infoflow.utils.tables import write_csv
from infoflow.utils.validation import check_choice, check_count

log = logging.getLogger(__name__)


class EvaluationCallback(pl.Callback):
    """Base of the evaluation callbacks: schedule, subset, rows, outputs. Subclasses implement `measure`.

    Args:
        model: the zoo name of the trained network (``${model.name}``).
        every_n_epochs: evaluate after every n-th training epoch (>= 1), and after the last one.
        at_start: also evaluate the initial weights before training (epoch 0).
        num_images: images of the fixed evaluation subset.
        split: ``val`` or ``test``.
        seed: seed of the subset's indices and of every per-image random draw.
        output_dir: where CSV and PNG files go (a subfolder `name`); None: the trainer's root dir.
    """

    #: the callback's name: CSV/PNG stem, logger key prefix
    name = "evaluation"

    def __init__(self, model: str, every_n_epochs: int = 1, at_start: bool = False, num_images: int = 8,
                 split: str = "val", seed: int = 0, output_dir: str | None = None) -> None:
        key = f"callbacks.{self.name}"
        self.every_n_epochs = check_count(every_n_epochs, f"{key}.every_n_epochs")
        self.num_images = check_count(num_images, f"{key}.num_images")
        self.split = check_choice(split, f"{key}.split", SPLITS)
        self.model_name, self.at_start, self.seed = str(model), bool(at_start), int(seed)
        self._output_dir = output_dir
        self.dm: ImageDataModule | None = None
        self.subset: dict[str, torch.Tensor] = {}
        self.indices: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.history = pd.DataFrame()
        self.seconds: list[float] = []

    # ---- setup -------------------------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        assert self._root is not None
        return self._root / "callbacks"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._root = Path(self._output_dir or trainer.default_root_dir)
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, ImageDataModule):
            raise ConfigError(f"callbacks.{self.name} needs an infoflow image datamodule (data=...)")
        self.dm = dm
        self.check(trainer, pl_module, dm)
        self.subset, self.indices = load_subset(dm, self.split, self.num_images, self.seed, f"callbacks.{self.name}")
        csv = self.out_dir / f"{self.name}.csv"
        if csv.is_file():  # resuming: keep the rows of the epochs already evaluated
            self.history = pd.read_csv(csv)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule) -> None:
        """Refuse bad settings for this task and data with a one-line `ConfigError` (before training)."""

    def shard(self, trainer: pl.Trainer) -> torch.Tensor:
        """Positions (into the subset) this process measures: every world_size-th from its rank."""
        return shard(len(self.indices), trainer.global_rank, trainer.world_size)

    # ---- schedule ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start and trainer.current_epoch == 0 and not self._done(0):
            self._evaluate(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs trained
        if is_due(epoch, self.every_n_epochs, trainer.max_epochs) and not self._done(epoch):
            self._evaluate(trainer, pl_module, epoch)

    def _done(self, epoch: int) -> bool:
        return not self.history.empty and bool((self.history["epoch"] == epoch).any())

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        assert self.dm is not None
        start = time.perf_counter()
        modes = {m: m.training for m in pl_module.modules()}
        try:
            with torch.inference_mode(False), torch.enable_grad():
                table = self.measure(trainer, pl_module, self.dm, epoch)
        finally:
            for m, mode in modes.items():
                m.training = mode
        seconds = time.perf_counter() - start
        self.seconds.append(seconds)
        if trainer.is_global_zero:
            table.insert(0, "epoch", epoch)
            table["seconds"] = seconds
            self.history = pd.concat([self.history, table], ignore_index=True)
            write_csv(self.history, self.out_dir / f"{self.name}.csv")
            self.log_epoch(trainer, table, epoch)
            log.info("callbacks.%s: epoch %d evaluated on %d images in %.2f s", self.name, epoch,
                     len(self.indices), seconds)
            for logger in trainer.loggers:
                logger.log_metrics({f"{self.name}/seconds": seconds}, step=trainer.global_step)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule,
                epoch: int) -> pd.DataFrame:
        """The results of one evaluation (on every process; collective), as a table (rank 0)."""
        raise NotImplementedError

    def log_epoch(self, trainer: pl.Trainer, table: pd.DataFrame, epoch: int) -> None:
        """Log one evaluation's results (rank 0)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not self.history.empty:
            paths = self.figures()
            total = sum(self.seconds)
            log.info("callbacks.%s: %d evaluations, %.1f s in all; figures: %s", self.name, len(self.seconds),
                     total, ", ".join(str(p) for p in paths))

    def figures(self) -> list[Path]:
        """Write the PNG figures of the whole history (rank 0); return their paths."""
        return []
