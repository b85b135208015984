"""Captum interop: IBA (Per-Sample and Readout) as `captum.attr.Attribution` classes, so that Captum's own
utilities (`visualization`, `metrics.infidelity`, `metrics.sensitivity_max`) accept it."""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import Attribution as CaptumAttribution

from infoflow.errors import InputError
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.readout import ReadoutIBA


class IBAAttribution(CaptumAttribution):
    """A fitted infoflow IBA method (`PerSampleIBA` or `ReadoutIBA`) behind Captum's interface.

    ``attribute(inputs, target)`` returns the heatmap in bits per pixel with Captum's shape convention: the
    inputs' shape (N, C, H, W), the (H, W) map repeated over the channels (``expand_channels=False``: (N, 1, H, W)).
    Without a target, the model's predicted classes are explained.
    """

    def __init__(self, method: PerSampleIBA | ReadoutIBA, expand_channels: bool = True) -> None:
        if not isinstance(method, PerSampleIBA | ReadoutIBA):
            raise InputError(f"IBAAttribution wraps a PerSampleIBA or ReadoutIBA, got {type(method).__name__}")
        super().__init__(method.model.module)
        self.method = method
        self.expand_channels = expand_channels

    def attribute(self, inputs: torch.Tensor, target: Any = None, **_: Any) -> torch.Tensor:  # type: ignore[override]
        """Heatmaps for images (N, C, H, W) and target classes (int, list or (N,) tensor; None: predicted)."""
        if not isinstance(inputs, torch.Tensor):
            raise InputError(f"IBAAttribution takes one image tensor (N, C, H, W), got {type(inputs).__name__}")
        if target is None:
            with torch.no_grad():
                target = self.method.model.module(inputs).argmax(1)
        maps = self.method.attribute(inputs, target).unsqueeze(1)
        return maps.expand(-1, inputs.shape[1], -1, -1) if self.expand_channels else maps

    def has_convergence_delta(self) -> bool:
        return False


class PerSampleIBAAttribution(IBAAttribution):
    """Per-Sample IBA for Captum: ``PerSampleIBAAttribution(PerSampleIBA(zoo, layer, ...).fit(data))``."""

    def __init__(self, method: PerSampleIBA, expand_channels: bool = True) -> None:
        if not isinstance(method, PerSampleIBA):
            raise InputError(f"expected a PerSampleIBA, got {type(method).__name__}")
        super().__init__(method, expand_channels)


class ReadoutIBAAttribution(IBAAttribution):
    """Readout IBA for Captum: ``ReadoutIBAAttribution(ReadoutIBA.load(zoo, ckpt))``."""

    def __init__(self, method: ReadoutIBA, expand_channels: bool = True) -> None:
        if not isinstance(method, ReadoutIBA):
            raise InputError(f"expected a ReadoutIBA, got {type(method).__name__}")
        super().__init__(method, expand_channels)
