"""What the evaluation callbacks share: the schedule, the fixed evaluation subset and its sharding over
processes, the network being trained as a `ZooModel`, a torchmetrics state that gathers result rows, and
the outputs (CSV in the run directory, scalars to every logger, tables/charts/images to W&B, PNGs).

Schedule: an evaluation runs at the end of every `every_n_epochs`-th training epoch (epochs counted from 1)
and at the last epoch; with ``at_start`` also once before training (epoch 0, the initial weights).

Subset: `num_images` images of the ``val`` or ``test`` split, at indices drawn once with `seed` (sorted). Every
process loads the whole subset and measures its share ``indices[rank::world]``; every per-image quantity
is seeded by the image's global index, so the numbers do not depend on the number of processes. The rows
are gathered through a torchmetrics state (`Rows`, ``dist_reduce_fx="cat"``) and rank 0 logs them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchmetrics import Metric  # noqa: E402

from infoflow.data.base import ImageDataModule  # noqa: E402
from infoflow.discarding.features import noise_generator  # noqa: E402
from infoflow.errors import ConfigError  # noqa: E402
from infoflow.models.zoo import MODELS, ZooModel  # noqa: E402
from infoflow.utils.tables import write_csv  # noqa: E402
from infoflow.utils.validation import check_choice, check_count  # noqa: E402
from infoflow.viz import save_figure  # noqa: E402

log = logging.getLogger(__name__)

SPLITS = ("val", "test")


def image_seed(seed: int, index: int, stream: str) -> int:
    """A seed for one image of the subset (by its global index), well separated from its neighbours'."""
    return int(noise_generator(seed, index, stream).initial_seed())


class Rows(Metric):
    """Result rows (R, K) float64 of this process; ``compute`` gathers every process's rows (NaN kept)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, rows: torch.Tensor) -> None:
        self.rows.append(rows.detach().to(self.device, torch.float64))

    def compute(self) -> torch.Tensor:
        rows = self.rows
        if isinstance(rows, list):
            return torch.cat(rows) if rows else torch.empty(0, 0, dtype=torch.float64)
        return rows


def trained_network(module: pl.LightningModule, model_name: str, dm: ImageDataModule) -> ZooModel:
    """The network `module` trains (or explains), as a `ZooModel` sharing its weights.

    The readout task's module holds its classifier as ``readout.zoo``; the classifier-type tasks' modules
    hold the network as ``model`` (`model_name` names its zoo entry, for the layer names).
    """
    readout = getattr(module, "readout", None)
    if readout is not None and isinstance(getattr(readout, "zoo", None), ZooModel):
        return readout.zoo
    net = getattr(module, "model", None)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"the evaluation callbacks measure a classifier, but {type(module).__name__} holds none "
                          "(use them with task=classifier|distill|prune|readout)")
    entry = MODELS.get(model_name)()
    num_classes = int(getattr(module.hparams, "num_classes", 0) or dm.num_classes)
    return ZooModel(model_name, net, num_classes, tuple(dm.input_size), "training", entry.layers(net))


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
        self.subset, self.indices = self._load_subset(dm)
        csv = self.out_dir / f"{self.name}.csv"
        if csv.is_file():  # resuming: keep the rows of the epochs already evaluated
            self.history = pd.read_csv(csv)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: ImageDataModule) -> None:
        """Refuse bad settings for this task and data with a one-line `ConfigError` (before training)."""

    def _load_subset(self, dm: ImageDataModule) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The whole subset as one batch (CPU), and its global indices (sorted)."""
        dm.setup("validate" if self.split == "val" else "test")
        loader = dm.val_dataloader() if self.split == "val" else dm.test_dataloader()
        dataset = loader.dataset
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ConfigError(f"callbacks.{self.name}.split={self.split}: the split is empty")
        gen = torch.Generator().manual_seed(self.seed)
        indices = torch.randperm(n, generator=gen)[: self.num_images].sort().values
        items = [dataset[int(i)] for i in indices]
        batch = loader.collate_fn([*items]) if loader.collate_fn is not None else torch.utils.data.default_collate(items)
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, indices

    def shard(self, trainer: pl.Trainer) -> torch.Tensor:
        """Positions (into the subset) this process measures: every world_size-th from its rank."""
        return torch.arange(len(self.indices))[trainer.global_rank :: trainer.world_size]

    # ---- schedule ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start and trainer.current_epoch == 0 and not self._done(0):
            self._evaluate(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs trained
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if (epoch % self.every_n_epochs == 0 or last) and not self._done(epoch):
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


# ---- outputs shared by the callbacks -----------------------------------------------------------------
def wandb_run(trainer: pl.Trainer) -> Any | None:
    """The W&B run of the trainer's WandbLogger, or None without one."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment
    return None


def log_scalars(trainer: pl.Trainer, scalars: dict[str, float]) -> None:
    """Finite scalars to every logger, at the current global step."""
    kept = {k: float(v) for k, v in scalars.items() if np.isfinite(v)}
    for logger in trainer.loggers:
        logger.log_metrics(kept, step=trainer.global_step)


def log_wandb(trainer: pl.Trainer, items: dict[str, Any]) -> None:
    """Log W&B objects (tables, charts, images) at the current global step, if there is a W&B run."""
    run = wandb_run(trainer)
    if run is not None and items:
        run.log({**items, "trainer/global_step": trainer.global_step})


def line_series(table: pd.DataFrame, x: str, y: str, series: str, title: str, xname: str,
                prefix: str | None = None) -> Any:
    """A W&B line-series chart: one line of `y` over `x` per value of `series` (named ``<prefix> <value>``,
    the prefix defaulting to the column's name)."""
    import wandb

    groups = list(table.groupby(series, sort=True))
    prefix = series if prefix is None else prefix
    return wandb.plot.line_series(
        xs=[g[x].astype(float).tolist() for _, g in groups], ys=[g[y].astype(float).tolist() for _, g in groups],
        keys=[f"{prefix} {k}".strip() for k, _ in groups], title=title, xname=xname,
    )


def wandb_table(table: pd.DataFrame) -> Any:
    import wandb

    return wandb.Table(dataframe=table.reset_index(drop=True))


def wandb_image(path: Path, caption: str) -> Any:
    import wandb

    return wandb.Image(str(path), caption=caption)


def plot_matrix(values: np.ndarray, rows: list[str], cols: list[Any], path: Path, title: str, unit: str,
                xlabel: str = "epoch") -> Path:
    """A rows x cols heatmap (e.g. layer x epoch) with the values written in the cells."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * max(len(cols), 3), 1.0 + 0.45 * max(len(rows), 2)))
    finite = values[np.isfinite(values)]
    im = ax.imshow(values, aspect="auto", cmap="viridis",
                   vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label=unit)
    return save_figure(fig, path)
