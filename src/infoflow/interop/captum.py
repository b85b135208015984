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
    Without a target, the model's predicted classes are explained. Gradients are enabled inside (Per-Sample IBA
    fits its bottleneck by gradient descent, also when Captum's metrics call it under ``torch.no_grad``).
    """

    def __init__(self, method: PerSampleIBA | ReadoutIBA, expand_channels: bool = True) -> None:
        if not isinstance(method, PerSampleIBA | ReadoutIBA):
            raise InputError(f"IBAAttribution wraps a PerSampleIBA or ReadoutIBA, got {type(method).__name__}")
        super().__init__(method.model.module)
        self.method = method
        self.expand_channels = expand_channels

    def attribute(  # type: ignore[override]
        self, inputs: torch.Tensor | tuple[torch.Tensor], target: Any = None, **_: Any
    ) -> torch.Tensor | tuple[torch.Tensor]:
        """Heatmaps for images (N, C, H, W) and target classes (int, list or (N,) tensor; None: predicted).

        A one-tensor tuple of images (as Captum's metrics pass them) gives a one-tensor tuple back."""
        if isinstance(inputs, tuple) and len(inputs) == 1:
            return (self.attribute(inputs[0], target),)  # type: ignore[return-value]
        if not isinstance(inputs, torch.Tensor):
            raise InputError(f"IBAAttribution takes one image tensor (N, C, H, W), got {type(inputs).__name__}")
        if target is None:
            with torch.no_grad():
                target = self.method.model.module(inputs).argmax(1)
        with torch.enable_grad():  # Per-Sample IBA optimises; captum's metrics call this under no_grad
            maps = self.method.attribute(inputs, target).detach().unsqueeze(1)
        return maps.repeat(1, inputs.shape[1], 1, 1) if self.expand_channels else maps

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
