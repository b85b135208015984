"""The whole-config check of the entry points, run before anything is built or any data is read.

`check_config` refuses a bad composed config of ``train.py`` or ``evaluate.py`` with one `ConfigError` (or
`DataError` for a missing data folder) that names the setting, the problem and the valid choices:

- ``seed`` and ``trainer.max_epochs`` are integers (``max_epochs`` >= 1), ``data.batch_size`` >= 1, a data
  ``root`` exists;
- the method node (and every Table 1 row, ``analysis.rows.<row>``) takes only its method's arguments, with
  the types of their defaults (int, float, bool), counts >= 1, beta a number >= 0 and a layer of the model;
- ``weights`` is ``none``, ``default`` (when the model's entry has default weights) or an existing file;
- ``analysis.only`` and ``analysis.layers`` name existing rows and layers; ``method=readout`` has a checkpoint.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from infoflow.attribution import METHODS
from infoflow.errors import ConfigError, DataError
from infoflow.models.entry import MODELS
from infoflow.utils.validation import check_batch_size, check_beta, check_common, check_count

#: method arguments that count something and must be >= 1
COUNT_ARGS = frozenset({"steps", "copies", "samples", "estimator_samples", "num_images", "n_steps",
                        "window", "stride"})


def _int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be an integer{bound}, got {value!r}")
    return value


def model_layers(cfg: DictConfig) -> list[str]:
    """The layer names of ``cfg.model`` (built with random weights: no file is read)."""
    entry = MODELS.get(cfg.model.name)()
    return list(entry.layers(entry.build(int(cfg.model.get("num_classes") or entry.num_classes))))


def check_layer(layer: Any, name: str, layers: list[str]) -> None:
    if layer is not None and str(layer) not in layers:
        raise ConfigError(f"{name}={layer}: not a layer of this model; choose one of: {', '.join(layers)}")


def check_method_node(node: Mapping[str, Any], name: str, layers: list[str]) -> None:
    """A method node (``method`` or ``analysis.rows.<row>``): known arguments of the right types."""
    factory = METHODS.get(str(node["name"]))
    signature = inspect.signature(factory).parameters
    params = {k: p for k, p in signature.items() if k != "model" and p.kind != p.VAR_KEYWORD}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in signature.values())  # checked by the method itself
    valid = set(params) | {"name", "precision"}
    for key, value in node.items():
        full = f"{name}.{key}"
        if key not in valid and not open_ended:
            raise ConfigError(f"{full}: unknown setting of method {node['name']}; valid keys: {', '.join(sorted(valid))}")
        default = params[key].default if key in params else inspect.Parameter.empty
        if key == "beta" and value is not None:
            check_beta(value, full)
        elif key == "layer":
            check_layer(value, full, layers)
        elif key == "batch_size" and value is not None:
            check_batch_size(value, full)
        elif key in COUNT_ARGS and value is not None:
            check_count(value, full)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{full} must be true or false, got {value!r}")
        elif isinstance(default, int) and value is not None:
            _int(value, full)
        elif isinstance(default, float) and value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{full} must be a number, got {value!r}")


def check_weights(cfg: DictConfig) -> None:
    weights = str(cfg.get("weights", "none"))
    entry = MODELS.get(cfg.model.name)()
    has_default = entry.default_weights is not None
    if weights.lower() == "none" or (weights == "default" and has_default) or Path(weights).expanduser().is_file():
        return
    if entry.torchvision_name is not None and weights != "default":
        return  # a torchvision weights enum name: get_model checks it against torchvision's list
    choices = "none, a checkpoint file" + (", default" if has_default else "")
    raise ConfigError(f"weights={weights}: not weights of model {cfg.model.name}; use {choices}")


def check_data(data: Any) -> None:
    if not hasattr(data, "get"):
        return
    if "batch_size" in data:
        _int(data.batch_size, "data.batch_size", 1)
    if "root" in data:
        root = data.root
        if root is None or str(root) in ("", "???") or not Path(str(root)).expanduser().is_dir():
            raise DataError(f"data.root={root}: no such folder; set data.root to the folder that holds the dataset")


def check_config(cfg: DictConfig) -> DictConfig:
    """Refuse a bad composed config of train.py or evaluate.py with a one-line user error, before any work;
    return `cfg`."""
    if "seed" in cfg and cfg.seed is not None:
        _int(cfg.seed, "seed")
    trainer = cfg.get("trainer")
    if hasattr(trainer, "get") and trainer.get("max_epochs") is not None:
        _int(trainer.max_epochs, "trainer.max_epochs", 1)
    check_common(cfg)
    if "model" not in cfg:
        return cfg
    check_weights(cfg)
    layers = model_layers(cfg)
    task = cfg.get("task")
    if hasattr(task, "get") and task.get("layer") is not None:
        check_layer(task.layer, "task.layer", layers)
    if hasattr(cfg.get("method"), "get") and cfg.method.get("name"):
        check_method_node(cfg.method, "method", layers)
        if cfg.method.name == "readout":
            ckpt = cfg.method.get("readout_ckpt")
            if ckpt is None or not Path(str(ckpt)).expanduser().is_file():
                raise ConfigError(f"readout_ckpt={ckpt}: method=readout needs the readout.pt or last.ckpt of a "
                                  "`python train.py task=readout` run")
    analysis = cfg.get("analysis")
    if hasattr(analysis, "get"):
        rows = analysis.get("rows") or {}
        for row, node in rows.items():
            if hasattr(node, "get") and node.get("name"):
                check_method_node(node, f"analysis.rows.{row}", layers)
        for only in analysis.get("only") or []:
            if str(only) not in rows:
                raise ConfigError(f"analysis.only: {only} is not a row; choose from: {', '.join(rows)}")
        for i, layer in enumerate(analysis.get("layers") or []):
            check_layer(layer, f"analysis.layers[{i}]", layers)
    check_data(cfg.get("data"))
    return cfg

