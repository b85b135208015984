"""Pieces shared by the analyses: images to analyse, provenance, logging of results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from infoflow.builders import build_loggers
from infoflow.data.base import ImageDataModule
from infoflow.stats import BootstrapSettings
from infoflow.utils.tables import write_csv
from infoflow.utils.validation import check_choice, check_common, check_count

#: the classes an analysis can explain: the label, or the model's prediction
TARGETS = ("label", "pred")


def check_settings(cfg: DictConfig) -> None:
    """Refuse bad evaluate.py settings before any work: beta, trainer, `num_images` and `target` (top level
    and the analysis's own)."""
    check_common(cfg)
    for scope, name in ((cfg, "num_images"), (cfg.analysis, "analysis.num_images")):
        if scope.get("num_images") is not None:
            check_count(scope.num_images, name)
    for scope, name in ((cfg, "target"), (cfg.analysis, "analysis.target")):
        if scope.get("target") is not None:
            check_choice(scope.target, name, TARGETS)


def bootstrap_settings(cfg: DictConfig) -> BootstrapSettings:
    """`BootstrapSettings` of an ``analysis.bootstrap`` block (level, n_resamples, seed, method)."""
    return BootstrapSettings(**OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]


def provenance(cfg: DictConfig) -> str:
    """The resolved config as YAML, stored in every figure and next to every table."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def evaluation_batches(
    dm: ImageDataModule, num_images: int, device: torch.device | str = "cpu"
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of the test split (on `device`) until `num_images` images have been given."""
    dm.setup("test")
    seen = 0
    for batch in dm.test_dataloader():
        if seen >= num_images:
            return
        take = min(num_images - seen, batch["label"].shape[0])
        yield {k: v[:take].to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        seen += take


def output_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_results(cfg: DictConfig, tables: dict[str, pd.DataFrame], images: dict[str, list[Path]],
                summary: dict[str, Any]) -> None:
    """Write tables as CSV into the run directory and log tables, images and summary to every logger."""
    out = output_dir(cfg)
    for name, df in tables.items():
        write_csv(df, out / f"{name}.csv")
    (out / "config.yaml").write_text(provenance(cfg))
    for logger in build_loggers(cfg):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        if summary:
            logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        if hasattr(logger, "log_table"):
            for name, df in tables.items():
                logger.log_table(key=name, dataframe=df)  # type: ignore[attr-defined]
            for name, paths in images.items():
                if paths:
                    logger.log_image(key=name, images=[str(p) for p in paths])  # type: ignore[attr-defined]
        logger.finalize("success")
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
