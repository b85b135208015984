"""What a readout checkpoint is valid for (model, weights, layers, data), and reading one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from infoflow.errors import ConfigError
from infoflow.models.zoo import ZooModel
from infoflow.utils.cache import LOADER_KEYS, SELECTION_KEYS, data_signature
from infoflow.utils.cache import tensor_fingerprint as weights_fingerprint
from infoflow.utils.checkpoint import CheckpointError, load_file

#: key of the metadata in readout checkpoints (Lightning ``.ckpt`` or the exported ``readout.pt``)
META_KEY = "readout_meta"
#: prefix of the readout's weights in a checkpoint's ``state_dict``
STATE_PREFIX = "readout."
#: data-config keys a trained readout does not depend on: loader settings and the choice of examples
_DATA_KEYS_IGNORED = LOADER_KEYS | SELECTION_KEYS


def setup_meta(model: ZooModel, layer: str | None = None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model (name, classes, input size, weights), bottleneck `layer` and data a readout is used with."""
    meta: dict[str, Any] = {
        "model": model.name,
        "weights": str(model.weights),
        "weights_fingerprint": weights_fingerprint(model.module),
        "num_classes": model.num_classes,
        "input_size": list(model.input_size),
        "data": data_signature(data, _DATA_KEYS_IGNORED),
    }
    if layer is not None:
        meta["layer"], meta["layer_path"] = layer, model.layer_path(layer)
    return meta


def check_meta(found: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    """Raise ValueError naming what differs when checkpoint metadata `found` is not for `expected`.

    Compares model, number of classes, input size, classifier weights, and where `expected` has them
    (see `setup_meta` and `ReadoutBottleneck.meta`) the bottleneck layer, readout layers and data.
    """
    problems = []
    for key, name, what in [("model", "model", "model"), ("num_classes", "num_classes", "number of classes"),
                            ("input_size", "input_size", "input size"), ("layer_path", "layer", "bottleneck layer"),
                            ("readout_paths", "readout_layers", "readout layers")]:
        if key in expected and _as_list(found[key]) != _as_list(expected[key]):
            problems.append(f"{what}: checkpoint {found[name]!r}, now {expected[name]!r}")
    if found["model"] == expected["model"]:
        if not isinstance(found["weights_fingerprint"], str):
            problems.append("classifier weights: the checkpoint records them in an older format; retrain it")
        elif found["weights_fingerprint"] != expected["weights_fingerprint"]:
            hint = " (random weights differ between processes: save them and pass weights=<file>)" * (
                found["weights"] == expected["weights"] == "none")
            problems.append(f"classifier weights: checkpoint trained with weights={found['weights']!r}, "
                            f"now weights={expected['weights']!r}, and they differ{hint}")
    if found.get("data") is not None and expected.get("data") is not None and found["data"] != expected["data"]:
        keys = sorted(set(found["data"]) | set(expected["data"]))
        diff = [f"data.{k}: checkpoint {found['data'].get(k)!r}, now {expected['data'].get(k)!r}"
                for k in keys if found["data"].get(k) != expected["data"].get(k)]
        problems.append("data (" + "; ".join(diff) + ")")
    if problems:
        raise ConfigError(f"readout checkpoint {source} was trained for another setup: " + "; ".join(problems)
                         + ". Use a checkpoint trained for this model, layer and data (python train.py task=readout"
                         " model=... layer=... data=...), or change the overrides to match it.")


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


def load_readout(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, readout state dict) of a readout checkpoint, read with ``weights_only=True``."""
    obj = load_file(path)
    if not isinstance(obj, dict) or META_KEY not in obj or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Readout Bottleneck checkpoint (train one with `python train.py task=readout`;"
                         " its run directory holds readout.pt and checkpoints/last.ckpt)")
    state = {k[len(STATE_PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(STATE_PREFIX)}
    return obj[META_KEY], state
