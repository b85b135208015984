"""Logging from the evaluation callbacks: scalars to every logger; tables, charts and images to W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl


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
    """A W&B table of `table`'s rows."""
    import wandb

    return wandb.Table(dataframe=table.reset_index(drop=True))


def wandb_image(path: Path, caption: str) -> Any:
    """A W&B image of the PNG at `path`."""
    import wandb

    return wandb.Image(str(path), caption=caption)
