"""timm models by name: ``get_model("timm/<arch>")`` and ``python evaluate.py model=timm model.arch=<arch>``.

Named layers come from the network's structure:

- CNNs (ResNet, ConvNeXt, EfficientNet, RegNet, ...): timm's ``feature_info`` modules, ``stem`` (a stride-2
  feature before the first stage, where timm lists one) and ``stage1`` .. ``stageK``, each a map (N, C, h, w);
- ViTs (ViT, DeiT, also distilled; any `VisionTransformer` subclass): ``embed`` (after the position
  embedding) and ``block1`` .. ``blockN``, patch maps through `TokenMap` adapters (as the torchvision ViTs);
  the class, register and distillation tokens (timm's ``num_prefix_tokens``) pass every bottleneck unchanged;
- ``fc``: the classifier; ``mid``: the middle one of the spatial layers (the config's default layer).

Normalisation and input size come from timm's ``pretrained_cfg``. Weights are ``none`` (random), a local file
(a state dict or a timm checkpoint), loaded through timm's own pretrained path (``pretrained=True`` with
``pretrained_cfg_overlay=dict(file=...)``: the same key filtering and classifier adaptation as a download),
or a timm pretrained tag (``default`` or e.g. ``in1k``), which needs the hub; offline, the error names the file.
timm is an optional dependency (``pip install 'infoflow[timm]'``), imported when a timm model is built.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from torch import nn

from infoflow.errors import ConfigError, DataError
from infoflow.models.entry import MODELS, ModelEntry
from infoflow.models.tokens import attach_token_map


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ConfigError("model=timm needs the timm package: pip install 'infoflow[timm]'") from err
    return timm


def _pretrained_cfg(arch: str) -> dict[str, Any]:
    timm = _timm()
    if not timm.is_model(arch.split(".")[0]):
        close = difflib.get_close_matches(arch.split(".")[0], timm.list_models(), n=8, cutoff=0.6)
        raise ConfigError(f"model.arch={arch!r}: not a timm architecture; similar: {', '.join(close)} "
                          "(timm.list_models() lists all)")
    cfg = timm.models.get_pretrained_cfg(arch.split(".")[0]) if "." not in arch else None
    cfg = cfg or timm.models.get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


def load_timm(arch: str, weights: str, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    """timm's `arch` with `weights` (module docstring), `num_classes` logits, for images of `input_size`."""
    timm = _timm()
    _pretrained_cfg(arch)  # raises for an unknown architecture
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": input_size[0], "img_size": input_size[1:]}
    path = Path(weights).expanduser()
    if weights.lower() == "none":
        return _create(timm, arch, False, kwargs)
    if path.is_file():
        # num_classes in the overlay: timm keeps the file's classifier when it matches (else drops it, as for
        # a download with another number of classes)
        overlay = {"file": str(path), "num_classes": num_classes}
        return _create(timm, arch, True, {**kwargs, "pretrained_cfg_overlay": overlay})
    if "/" in weights or weights.endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors")):
        raise DataError(f"weights={weights}: no such file")
    tag = arch if weights.lower() == "default" else f"{arch.split('.')[0]}.{weights}"
    try:
        return _create(timm, tag, True, kwargs)
    except Exception as err:  # network errors come in many types (OSError, HTTPError, LocalEntryNotFound ...)
        cfg = _pretrained_cfg(tag)
        source = cfg.get("hf_hub_id") or cfg.get("url") or tag
        raise DataError(
            f"could not fetch the timm weights {tag!r} ({type(err).__name__}: {err}). This machine may be offline: "
            f"fetch them from {source} (the model.safetensors or pytorch_model.bin file) elsewhere and pass "
            "weights=/path/to/that/file") from err


def _create(timm: Any, arch: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """`timm.create_model`; ``img_size`` is passed only to the architectures that take it (transformers)."""
    try:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        return timm.create_model(arch, pretrained=pretrained, **{k: v for k, v in kwargs.items() if k != "img_size"})


def timm_layers(model: nn.Module) -> dict[str, str]:
    """The named layers of a timm model (module docstring), in forward order."""
    names: dict[str, str] = {}
    if hasattr(model, "infoflow_token_layers"):
        names.update(model.infoflow_token_layers)
    else:
        info = [f["module"] for f in getattr(model, "feature_info", [])]
        reductions = [f.get("reduction", 0) for f in getattr(model, "feature_info", [])]
        if info and reductions[0] == 2 and len(info) > 1:
            names["stem"], info = info[0], info[1:]
        names.update({f"stage{i + 1}": p for i, p in enumerate(info)})
    spatial = list(names.values())
    if spatial:
        names["mid"] = spatial[len(spatial) // 2]
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    path = next((p for p, m in model.named_modules() if m is head), None)
    if path:
        names["fc"] = path
    return names


def _add_token_maps(model: nn.Module) -> nn.Module:
    """Attach the ``embed``/``blockN`` adapters to a timm ViT (`attach_token_map`); other models unchanged."""
    blocks = getattr(model, "blocks", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    patch_embed = getattr(model, "patch_embed", None)
    if blocks is None or prefix is None or patch_embed is None or not hasattr(patch_embed, "grid_size"):
        return model
    grid = tuple(patch_embed.grid_size)
    layers = {"embed": attach_token_map(model, "norm_pre", "embed", grid, prefix)}
    for i in range(len(blocks)):
        layers[f"block{i + 1}"] = attach_token_map(model, f"blocks.{i}", f"block{i + 1}", grid, prefix)
    model.infoflow_token_layers = layers
    model.parameter_paths = {"embed": "patch_embed", **{f"block{i + 1}": f"blocks.{i}" for i in range(len(blocks))}}
    return model


def timm_entry(arch: str) -> ModelEntry:
    """The `ModelEntry` of timm architecture `arch` (a timm model name, optionally with a pretrained tag)."""
    cfg = _pretrained_cfg(arch)
    size = tuple(int(s) for s in cfg.get("input_size", (3, 224, 224)))
    return ModelEntry(
        build=lambda n: _add_token_maps(load_timm(arch, "none", n, size)),  # type: ignore[arg-type]
        layers=timm_layers,
        input_size=size,  # type: ignore[arg-type]
        num_classes=int(cfg.get("num_classes") or 1000),
        load=lambda w, n, s: _add_token_maps(load_timm(arch, w, n, s)),
        mean=tuple(cfg["mean"]) if "mean" in cfg else None,
        std=tuple(cfg["std"]) if "std" in cfg else None,
    )


MODELS.register_namespace("timm", timm_entry)
