"""Appendix A's adversarial robustness: the mean L2 norm of minimal targeted perturbations to the top-k wrong classes.

For each test image and each of its `top_k` highest-scoring wrong classes, torchattacks' targeted CW-L2
(Carlini & Wagner 2017; Adam on the tanh-box variable, `steps` steps) searches a perturbation of the [0, 1]
image that makes the model predict that class. CW's constant c trades the norm against success, and
torchattacks does not binary-search it, so each c of `c_values` is tried (smallest first) and, per
(image, target), the smallest successful perturbation is kept: an approximately minimal one. The
robustness is the mean L2 norm over all successful (image, target) pairs, in [0, 1] pixel units over
C x H x W values, as the paper's ||eps||_2; the success rate says how many pairs are covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from infoflow.errors import ConfigError


@dataclass
class RobustnessResult:
    """Per (image, target) L2 norms, shape (N, k), NaN where no c succeeded."""

    norms: torch.Tensor

    @property
    def success_rate(self) -> float:
        return float(torch.isfinite(self.norms).float().mean())

    @property
    def mean_l2(self) -> float:
        ok = self.norms[torch.isfinite(self.norms)]
        return float(ok.mean()) if ok.numel() else float("nan")


def top_wrong_classes(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) the k highest-scoring classes other than the label, best first."""
    masked = logits.clone()
    masked[torch.arange(len(labels)), labels] = -float("inf")
    return masked.topk(k, dim=1).indices


def require_torchattacks() -> ModuleType:
    """The optional attack library, or a `ConfigError` that says how to install it (checked before a study's
    first stage runs, so a missing library does not stop it after minutes of training)."""
    try:
        import torchattacks
    except ImportError:
        raise ConfigError("the robustness stage needs torchattacks: pip install --no-deps 'torchattacks>=3.5' "
                          "(--no-deps: its pins would downgrade requests/urllib3; make install does this), or "
                          "drop the robustness stage") from None
    return torchattacks


def minimal_targeted_l2(
    model: nn.Module,
    images01: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    top_k: int = 3,
    c_values: Sequence[float] = (0.1, 1.0, 10.0),
    steps: int = 50,
    lr: float = 0.01,
) -> RobustnessResult:
    """Minimal targeted CW-L2 perturbation norms towards the `top_k` wrong classes (module docstring).

    Args:
        model: maps normalised images (N, C, H, W) to logits (N, K); used in eval mode.
        images01: (N, C, H, W) images in [0, 1]; labels: (N,) true classes.
        mean, std: the model's input normalisation (applied inside the attack).
    """
    torchattacks = require_torchattacks()
    model = model.eval()
    mean_t = torch.tensor(mean, device=images01.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images01.device).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((images01 - mean_t) / std_t)
    if not 1 <= top_k < logits.shape[1]:
        raise ConfigError(f"top_k must be in [1, {logits.shape[1] - 1}] for {logits.shape[1]} classes, got {top_k}")
    targets = top_wrong_classes(logits, labels, top_k)
    norms = torch.full(targets.shape, float("nan"))
    for c in sorted(c_values):
        attack = torchattacks.CW(model, c=c, kappa=0, steps=steps, lr=lr)
        attack.set_normalization_used(mean=list(mean), std=list(std))
        attack.set_mode_targeted_by_label(quiet=True)
        for j in range(top_k):
            adv = attack(images01, targets[:, j])
            with torch.no_grad():
                hit = model((adv - mean_t) / std_t).argmax(1) == targets[:, j]
            l2 = (adv - images01).flatten(1).norm(dim=1).cpu()
            better = hit.cpu() & ~(norms[:, j] <= l2)  # NaN (not yet found) or larger so far
            norms[better, j] = l2[better]
    return RobustnessResult(norms)
