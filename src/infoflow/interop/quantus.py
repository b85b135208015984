"""Quantus interop: every infoflow method as a Quantus ``explain_func``, and infoflow's SSIM as a Quantus
``similarity_func``.

Quantus is an optional extra (``pip install infoflow[quantus]``); this module imports without it, and its
functions raise a `ConfigError` naming the extra when it is missing.

Example::

    import quantus
    from infoflow.interop.quantus import explain_func
    metric = quantus.RelevanceRankAccuracy(disable_warnings=True)
    scores = metric(model=zoo.module, x_batch=x, y_batch=y, s_batch=masks, explain_func=explain_func,
                    explain_func_kwargs={"method": "iba", "zoo": zoo, "layer": "conv3", "estimator": est})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from infoflow.attribution import METHODS, Attribution
from infoflow.errors import ConfigError
from infoflow.metrics.sanity import heatmap_ssim
from infoflow.models.zoo import ZooModel
from infoflow.utils.validation import as_target, check_images


def require_quantus() -> ModuleType:
    """The `quantus` module; ConfigError naming the extra to install when it is missing."""
    try:
        return importlib.import_module("quantus")
    except ImportError as err:
        raise ConfigError(
            "the Quantus interop needs the optional dependency quantus: pip install 'infoflow[quantus]'"
        ) from err


def _zoo_for(model: nn.Module | ZooModel, zoo: ZooModel | None, inputs: torch.Tensor) -> ZooModel:
    """A ZooModel around `model`: `zoo`'s metadata (layers, classes) with `model` as the network (Quantus
    passes randomised copies to MPRT), or, without `zoo`, a bare one whose class count is read off a forward."""
    if isinstance(model, ZooModel):
        return model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"explain_func needs a torch nn.Module (or a ZooModel), got {type(model).__name__}")
    if zoo is not None:
        return zoo if zoo.module is model else replace(zoo, module=model)
    with torch.no_grad():
        classes = int(model(inputs[:1]).shape[1])
    return ZooModel("custom", model, classes, tuple(inputs.shape[1:]))  # type: ignore[arg-type]


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def build_method(
    model: nn.Module | ZooModel,
    inputs: torch.Tensor,
    method: str | Attribution,
    zoo: ZooModel | None = None,
    fit_data: Iterable[dict[str, torch.Tensor]] | None = None,
    **kwargs: Any,
) -> Attribution:
    """The infoflow method `method` (a METHODS name, or a ready Attribution) for `model`; fitted on `fit_data`
    when given (IBA's feature statistics, PatternAttribution's patterns)."""
    if isinstance(method, Attribution):
        return method
    instance = METHODS.get(method)(_zoo_for(model, zoo, inputs), **kwargs)
    return instance.fit(fit_data) if fit_data is not None else instance


def explain_func(
    model: nn.Module | ZooModel,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor | int,
    method: str | Attribution = "iba",
    zoo: ZooModel | None = None,
    fit_data: Iterable[dict[str, torch.Tensor]] | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Quantus's ``explain_func`` convention: numpy in, numpy out.

    Args:
        model: the network Quantus passes (nn.Module; for MPRT a randomised copy), or a ZooModel.
        inputs: images (N, C, H, W), normalised as the model expects; targets: (N,) class indices.
        method: a name in `infoflow.attribution.METHODS` (``iba``, ``readout``, ``gradcam``, ...), or a ready
            Attribution (then `model` is ignored).
        zoo: the ZooModel that `model` belongs to: its layer names (``layer="conv3"``) and class count.
        fit_data: batches to fit the method on (IBA's statistics); or pass ``estimator=`` for IBA.
        device: set by Quantus when its metric gets ``device=``; unused: the method runs on the model's device.
        kwargs: the method's arguments (``layer``, ``beta``, ``estimator``, ``readout_ckpt``, ...).
    Returns:
        (N, 1, H, W) float32 attributions, one channel as Quantus's own explain functions return.
    """
    require_quantus()
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    check_images(x)
    net = model.module if isinstance(model, ZooModel) else model
    device = _device(net) if isinstance(net, nn.Module) else torch.device("cpu")
    x = x.to(device)
    y = as_target(np.asarray(targets), x.shape[0], device)
    instance = build_method(model, x, method, zoo, fit_data, **kwargs)
    maps = instance.attribute(x, y)
    return maps.detach().float().unsqueeze(1).cpu().numpy()


def ssim_similarity(height: int, width: int, signed: bool = False, win_size: int = 5) -> Callable[..., Any]:
    """infoflow's sanity-check SSIM (`heatmap_ssim`: quantile normalisation, 2-D SSIM) as a Quantus
    ``similarity_func`` for maps of (height, width) pixels.

    Quantus's MPRT hands the similarity function flattened maps (N, H*W); its own `ssim` then computes a 1-D
    SSIM along the flattened rows. This one restores the (H, W) layout first."""

    def similarity(a: np.ndarray, b: np.ndarray, batched: bool = False, **_: Any) -> np.ndarray | float:
        ta = torch.as_tensor(np.asarray(a), dtype=torch.float64).reshape(-1, height, width)
        tb = torch.as_tensor(np.asarray(b), dtype=torch.float64).reshape(-1, height, width)
        s = heatmap_ssim(ta, tb, signed=signed, win_size=win_size).numpy()
        return s if batched else float(s[0])

    return similarity
