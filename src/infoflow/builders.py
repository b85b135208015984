"""Turn composed Hydra configs into objects: data, model, trainer, loggers (cache paths: `utils.cache`)."""

from __future__ import annotations

import inspect
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from infoflow.attribution import METHODS, Attribution
from infoflow.data.base import ImageDataModule
from infoflow.models import pretrained  # noqa: F401  (registers the default weights' version for cache keys)
from infoflow.models.zoo import ZooModel, get_model
from infoflow.utils.cache import cache_path, weights_id  # noqa: F401  (re-exported for the tasks)
from infoflow.utils.precision import lightning_precision


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    dm = hydra.utils.instantiate(cfg.data)
    if not isinstance(dm, ImageDataModule):
        raise TypeError(f"data config must build an ImageDataModule, got {type(dm).__name__}")
    return dm


def build_model(cfg: DictConfig, dm: ImageDataModule, weights: str | None = None) -> ZooModel:
    """The zoo model `cfg.model.name` with `cfg.weights`, sized for the data's classes and images."""
    return get_model(
        cfg.model.name,
        weights=cfg.weights if weights is None else weights,
        num_classes=cfg.model.num_classes or dm.num_classes,
        input_size=dm.input_size,
    )


def build_method(cfg: DictConfig, model: ZooModel, dm: ImageDataModule | None = None) -> Attribution:
    """The attribution method `cfg.method` for `model`; a method that `requires_fit` is fitted on the data's
    training split (the only case in which the training split is set up: evaluation needs no ``train/``)."""
    kwargs = OmegaConf.to_container(cfg.method, resolve=True)
    assert isinstance(kwargs, dict)
    factory = METHODS.get(kwargs.pop("name"))
    # methods that take no `precision` argument get it through `set_precision` (the baselines)
    precision = None if "precision" in inspect.signature(factory).parameters else kwargs.pop("precision", None)
    method = factory(model, **kwargs)
    if precision is not None and hasattr(method, "set_precision"):
        method.set_precision(precision)
    if dm is not None and method.requires_fit:
        dm.setup("fit")
        method.fit(dm.train_dataloader())
    return method


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    return [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    return [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The Lightning Trainer of `cfg.trainer` with the configured loggers and callbacks.

    The top-level ``precision`` (32 | bf16 | 16-mixed) becomes Lightning's ``precision`` (``32-true``,
    ``bf16-mixed``, ``16-mixed``; fp32 with a warning where the accelerator lacks support), unless
    ``trainer.precision`` or `overrides` set it.
    """
    if cfg.get("precision") is not None and "precision" not in overrides and cfg.trainer.get("precision") is None:
        overrides["precision"] = lightning_precision(cfg.precision, cfg.trainer.get("accelerator", "cpu"))
    return hydra.utils.instantiate(
        cfg.trainer, logger=build_loggers(cfg) or False, callbacks=build_callbacks(cfg), **overrides
    )


def log_config(trainer: pl.Trainer, cfg: DictConfig) -> None:
    """Record the resolved config in every logger (provenance)."""
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)  # type: ignore[arg-type]
