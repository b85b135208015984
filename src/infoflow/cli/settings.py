"""The whole-config check of the entry points, run before anything is built or any data is read.

`check_config` refuses a bad composed config of ``train.py`` or ``evaluate.py`` with one `ConfigError` (or
`DataError` for a missing data folder) that names the setting, the problem and the valid choices:

- ``seed`` and ``trainer.max_epochs`` are integers (``max_epochs`` >= 1), ``data.batch_size`` >= 1, a data
  ``root`` exists;
- the method node (and every Table 1 row, ``analysis.rows.<row>``) takes only its method's arguments, with
  the types of their defaults (int, float, bool), counts >= 1, beta a number >= 0 and a layer of the model;
- ``weights`` is ``none``, ``default`` (when the model's entry has default weights) or an existing file;
- ``analysis.only`` and ``analysis.layers`` name existing rows and layers;
- ``method=readout`` has a readout checkpoint (not a classifier's) trained for this model and layer;
- the method supports the model (its ``unsupported``, e.g. PatternAttribution refuses ResNets);
- ``model.num_classes`` and ``data.num_classes`` are >= 2 (one class: softmax 1 for every image);
- ``weights=default`` on ``data.image_size`` other than the size the default weights were trained at is a
  `InputSizeWarning` (the network still runs, but its predictions are near chance).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from infoflow.attribution import METHODS
from infoflow.errors import ConfigError, DataError
from infoflow.iba.readout.meta import load_readout
from infoflow.interface import Attribution
from infoflow.models.entry import MODELS
from infoflow.models.pretrained import DEFAULTS, default_weights_image_size
from infoflow.models.zoo import get_model
from infoflow.utils.validation import check_batch_size, check_beta, check_common, check_count


class InputSizeWarning(UserWarning):
    """Trained weights run on images of another size than they were trained on."""


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


def _produced(path: Any, produced: str | Path | None) -> bool:
    """Whether `path` lies under `produced`, a folder that earlier stages of a study fill (not written yet)."""
    if produced is None or path is None:
        return False
    return Path(str(path)).expanduser().resolve().is_relative_to(Path(produced).expanduser().resolve())


def check_weights(cfg: DictConfig, produced: str | Path | None = None) -> None:
    weights = str(cfg.get("weights", "none"))
    entry = MODELS.get(cfg.model.name)()
    has_default = entry.default_weights is not None
    if (weights.lower() == "none" or (weights == "default" and has_default) or Path(weights).expanduser().is_file()
            or _produced(weights, produced)):
        return
    if entry.torchvision_name is not None and weights != "default":
        return  # a torchvision weights enum name: get_model checks it against torchvision's list
    choices = "none, a checkpoint file" + (", default" if has_default else "")
    raise ConfigError(f"weights={weights}: not weights of model {cfg.model.name}; use {choices}")


def check_readout_ckpt(cfg: DictConfig, produced: str | Path | None = None) -> None:
    """``method=readout``: ``readout_ckpt`` is a readout checkpoint for this model and bottleneck layer (the
    weights and data are checked when it is loaded)."""
    ckpt = cfg.method.get("readout_ckpt")
    hint = "the readout.pt or checkpoints/last.ckpt of a `python train.py task=readout` run"
    if _produced(ckpt, produced) and not Path(str(ckpt)).expanduser().is_file():
        return  # an earlier stage of the study trains it
    if ckpt is None or not Path(str(ckpt)).expanduser().is_file():
        raise ConfigError(f"readout_ckpt={ckpt}: method=readout needs {hint}")
    try:
        meta, _ = load_readout(Path(str(ckpt)).expanduser())
    except DataError as err:
        raise ConfigError(f"readout_ckpt={ckpt}: not a readout checkpoint: {err}") from None
    layer = cfg.method.get("layer")
    for key, now, setting in (("model", cfg.model.name, "model"), ("layer", layer, "method.layer")):
        same = {str(meta.get(key)), str(meta.get("layer_path"))} if key == "layer" else {str(meta.get(key))}
        if now is not None and meta.get(key) is not None and str(now) not in same:  # a layer by name or path
            raise ConfigError(f"readout_ckpt={ckpt}: trained for {key} {meta[key]}, but {setting}={now}; use a "
                              f"readout trained for {setting}={now} (python train.py task=readout), or set "
                              f"{setting}={meta[key]}")


def check_classes(cfg: DictConfig) -> None:
    """A classifier needs two classes or more: with one, its softmax is 1 for every image."""
    data = cfg.get("data")
    for name, value in (("model.num_classes", cfg.model.get("num_classes")),
                        ("data.num_classes", data.get("num_classes") if hasattr(data, "get") else None)):
        if value is not None and _int(value, name, 1) < 2:
            raise ConfigError(f"{name}={value}: a classifier needs at least 2 classes; with one, its softmax is 1 "
                              "for every image, so every explanation and metric is empty")


def check_input_size(cfg: DictConfig) -> None:
    """Warn when ``weights=default`` runs on ``data.image_size`` other than the weights' training size."""
    data = cfg.get("data")
    size = data.get("image_size") if hasattr(data, "get") else None
    model = str(cfg.model.name)
    if str(cfg.get("weights", "none")) != "default" or model not in DEFAULTS or size is None:
        return
    trained = default_weights_image_size(model)
    if int(size) != trained:
        warnings.warn(f"data.image_size={size}: the default weights of model {model} were trained on {trained} px "
                      f"images and predict near chance at {size} px; set data.image_size={trained}, or weights= a "
                      f"checkpoint trained at {size} px", InputSizeWarning, stacklevel=2)


def check_supported(cfg: DictConfig) -> None:
    """A method class that refuses the model (its own ``unsupported``, e.g. PatternAttribution on a ResNet) is a
    ConfigError naming ``method`` and ``model``, before any data is read."""
    factory = METHODS.get(str(cfg.method.name))
    unsupported = getattr(factory, "unsupported", None)
    if unsupported is None or getattr(unsupported, "__func__", None) is Attribution.unsupported.__func__:
        return  # a method that explains every model
    entry = MODELS.get(cfg.model.name)()
    num_classes = int(cfg.model.get("num_classes") or entry.num_classes)
    reason = unsupported(get_model(str(cfg.model.name), "none", num_classes))
    if reason is not None:
        raise ConfigError(f"method={cfg.method.name} model={cfg.model.name}: {reason}")


def check_data(data: Any) -> None:
    if not hasattr(data, "get"):
        return
    if "batch_size" in data:
        _int(data.batch_size, "data.batch_size", 1)
    if "root" in data:
        root = data.root
        if root is None or str(root) in ("", "???") or not Path(str(root)).expanduser().is_dir():
            raise DataError(f"data.root={root}: no such folder; set data.root to the folder that holds the dataset")


def check_config(cfg: DictConfig, produced: str | Path | None = None) -> DictConfig:
    """Refuse a bad composed config of train.py or evaluate.py with a one-line user error, before any work;
    return `cfg`. Weights and readout files under `produced` (a study's folder, filled by its earlier stages)
    count as present."""
    if "seed" in cfg and cfg.seed is not None:
        _int(cfg.seed, "seed")
    trainer = cfg.get("trainer")
    if hasattr(trainer, "get") and trainer.get("max_epochs") is not None:
        _int(trainer.max_epochs, "trainer.max_epochs", 1)
    check_common(cfg)
    if "model" not in cfg:
        return cfg
    check_weights(cfg, produced)
    layers = model_layers(cfg)
    task = cfg.get("task")
    if hasattr(task, "get") and task.get("layer") is not None:
        check_layer(task.layer, "task.layer", layers)
    if hasattr(cfg.get("method"), "get") and cfg.method.get("name"):
        check_method_node(cfg.method, "method", layers)
        if cfg.method.name == "readout":
            check_readout_ckpt(cfg, produced)
        check_supported(cfg)
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
    check_classes(cfg)
    check_input_size(cfg)
    return cfg

