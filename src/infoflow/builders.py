"""Turn composed Hydra configs into objects: data, model, trainer, loggers, cache paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from infoflow.attribution import METHODS, Attribution
from infoflow.data.base import ImageDataModule
from infoflow.models.pretrained import default_weights_version
from infoflow.models.zoo import ZooModel, get_model

#: datamodule settings that do not change the data itself
_DATA_RUNTIME_KEYS = {"batch_size", "num_workers"}


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


def config_hash(obj: Any, n: int = 10) -> str:
    """Short stable hash of a (resolved) config or plain value."""
    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True)
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def weights_id(weights: str) -> str:
    """Identify weights by name (``default``: with its version, see `default_weights_version`), or a
    checkpoint file by path, size and modification time."""
    if str(weights) == "default":
        return f"default-{default_weights_version()}"
    path = Path(str(weights)).expanduser()
    if path.is_file():
        st = path.stat()
        return f"{path.stem}-{config_hash([str(path.resolve()), st.st_size, st.st_mtime_ns], 8)}"
    return str(weights)


def data_id(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    kept = {k: v for k, v in data.items() if k not in _DATA_RUNTIME_KEYS}
    return f"{str(kept.get('_target_', 'data')).rsplit('.', 1)[-1]}-{config_hash(kept, 8)}"


def cache_path(cfg: DictConfig, kind: str, layer: str, weights: str | None = None) -> Path:
    """File for statistics computed once per (model, weights, layer, data): estimators, delta_f^2, ..."""
    w = weights_id(cfg.weights if weights is None else weights)
    return Path(cfg.paths.cache_dir) / kind / f"{cfg.model.name}-{w}-{layer}-{data_id(cfg)}.pt"


def _cache_path_resolver(kind: str, *, _root_: DictConfig) -> str:
    return str(cache_path(_root_, kind, _root_.layer))


OmegaConf.register_new_resolver("cache_path", _cache_path_resolver, replace=True)


def build_method(cfg: DictConfig, model: ZooModel, dm: ImageDataModule | None = None) -> Attribution:
    """The attribution method `cfg.method` for `model`; a method that `requires_fit` is fitted on the data's
    training split (the only case in which the training split is set up: evaluation needs no ``train/``)."""
    kwargs = OmegaConf.to_container(cfg.method, resolve=True)
    assert isinstance(kwargs, dict)
    method = METHODS.get(kwargs.pop("name"))(model, **kwargs)
    if dm is not None and method.requires_fit:
        dm.setup("fit")
        method.fit(dm.train_dataloader())
    return method


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    return [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    return [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The Lightning Trainer of `cfg.trainer` with the configured loggers and callbacks."""
    return hydra.utils.instantiate(
        cfg.trainer, logger=build_loggers(cfg) or False, callbacks=build_callbacks(cfg), **overrides
    )


def log_config(trainer: pl.Trainer, cfg: DictConfig) -> None:
    """Record the resolved config in every logger (provenance)."""
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)  # type: ignore[arg-type]
