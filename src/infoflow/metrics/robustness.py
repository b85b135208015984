"""Robustness of explanations through `captum.metrics`: max-sensitivity (Yeh et al. 2019) and infidelity
(Yeh et al. 2019), as sum-reduced torchmetrics Metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.metrics import infidelity, sensitivity_max
from torchmetrics import Metric

from infoflow.metrics.perturb import Classifier, classifier_device, resolve_classifier
from infoflow.utils.modules import hide_module
from infoflow.utils.validation import as_target, check_count, check_maps, check_number

#: an attribution function: images (N, C, H, W), target (N,) -> maps (N, H, W)
Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


class MaxSensitivity(Metric):
    """Mean over images of max_{|d|_inf <= r} |phi(x + d) - phi(x)|_F / |phi(x)|_F (captum's `sensitivity_max`).

    `n_perturb_samples` uniform perturbations of radius `perturb_radius` (normalised input units) per image,
    drawn under `torch.manual_seed(seed + call index)` (global RNG state restored). Lower is better.
    States (sum-reduced): the sum of the per-image sensitivities and the image count.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    sensitivity_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, explain: Explain, perturb_radius: float = 0.02, n_perturb_samples: int = 10, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_number(perturb_radius, "perturb_radius", strict=True)
        check_count(n_perturb_samples, "n_perturb_samples")
        self.explain, self.radius, self.samples, self.seed = explain, float(perturb_radius), int(n_perturb_samples), seed
        self._calls = 0
        self.add_state("sensitivity_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, target: torch.Tensor | int) -> None:
        """Add a batch: images (N, C, H, W) normalised, target (N,) class indices."""
        target = as_target(target, images.shape[0], images.device)

        def explanation(
            x: torch.Tensor | tuple[torch.Tensor], target: torch.Tensor
        ) -> torch.Tensor | tuple[torch.Tensor]:
            if isinstance(x, tuple):  # captum passes its perturbed inputs as a tuple, and wants one back
                return (self.explain(x[0], target).detach(),)
            return self.explain(x, target).detach()

        with torch.random.fork_rng(devices=_devices(images.device)):
            torch.manual_seed(self.seed + self._calls)
            s = sensitivity_max(explanation, images, perturb_radius=self.radius, n_perturb_samples=self.samples,
                                target=target)
        self._calls += 1
        self.sensitivity_sum += s.double().sum().to(self.sensitivity_sum.device)
        self.count += images.shape[0]

    def compute(self) -> torch.Tensor:
        return self.sensitivity_sum / self.count


class Infidelity(Metric):
    """Mean infidelity E_I[(I . phi - (f(x) - f(x - I)))^2] (captum's `infidelity`), f the target logit.

    I ~ N(0, noise_std^2) i.i.d. per input value (normalised input units); the (H, W) map is repeated over the
    channels. With `normalize`, phi is first rescaled by the least-squares factor (scale-invariant; Captum's
    `normalize=True`). Noise is drawn under `torch.manual_seed(seed + call index)`. Lower is better.
    States (sum-reduced): the sum of the per-image infidelities and the image count.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    infidelity_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, model: Classifier, noise_std: float = 0.1, n_perturb_samples: int = 10,
                 normalize: bool = True, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_number(noise_std, "noise_std", strict=True)
        check_count(n_perturb_samples, "n_perturb_samples")
        hide_module(self, "model", resolve_classifier(model))  # not part of the state_dict
        self.noise_std, self.samples, self.normalize, self.seed = float(noise_std), int(n_perturb_samples), normalize, seed
        self._calls = 0
        self.add_state("infidelity_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, target: torch.Tensor | int, attributions: torch.Tensor) -> None:
        """Add a batch: images (N, C, H, W) normalised, target (N,) class indices, attributions (N, H, W)."""
        check_maps(attributions, (images.shape[0], *images.shape[2:]))
        device = classifier_device(self.model, images.device)
        images = images.to(device)
        target = as_target(target, images.shape[0], device)
        maps = attributions.to(device, images.dtype).unsqueeze(1).expand_as(images)

        def perturb(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            noise = torch.randn_like(x) * self.noise_std
            return noise, x - noise

        with torch.random.fork_rng(devices=_devices(device)), torch.no_grad():
            torch.manual_seed(self.seed + self._calls)
            s = infidelity(self.model, perturb, images, maps, target=target, n_perturb_samples=self.samples,
                           normalize=self.normalize)
        self._calls += 1
        self.infidelity_sum += s.double().sum().to(self.infidelity_sum.device)
        self.count += images.shape[0]

    def compute(self) -> torch.Tensor:
        return self.infidelity_sum / self.count
