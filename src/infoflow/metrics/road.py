"""ROAD (Rong et al. 2022): remove the most (least) relevant pixels and debias the removal with noisy linear
imputation, then record the model's target probability and accuracy.

Filling removed pixels by a weighted average of their neighbours (instead of a constant or mean tile) keeps
the image in distribution and hides the removal mask's shape, which would otherwise leak the class."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from infoflow.errors import ConfigError
from infoflow.metrics.perturb import Classifier, classifier_device, resolve_classifier, run_perturbations
from infoflow.utils.modules import hide_module
from infoflow.utils.validation import as_target, check_images, check_maps

#: neighbour weights of the imputation (Rong et al.): 1/6 for the 4 direct neighbours, 1/12 for the diagonals
NEIGHBOUR_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                                dtype=torch.float64)


def linear_imputation(
    images: torch.Tensor, removed: torch.Tensor, tol: float = 1e-8, max_iter: int = 2000
) -> torch.Tensor:
    """Fill the `removed` pixels of each channel with the solution of the discrete Laplace equation.

    Every removed pixel equals the weighted mean of its in-image neighbours (`NEIGHBOUR_KERNEL`, weights
    renormalised at the border); kept pixels are fixed. The sparse symmetric positive-definite system is solved
    by batched conjugate gradients (float64, matrix-free, relative residual `tol`).

    Args:
        images: (N, C, H, W); removed: (N, H, W) bool; an image must keep at least one pixel.
    Returns:
        (N, C, H, W) images (dtype of `images`) with the removed pixels imputed.
    """
    n, c, h, w = images.shape
    if (removed.flatten(1).all(1)).any():
        raise ConfigError("linear imputation needs at least one kept pixel per image (fractions < 1)")
    kernel = NEIGHBOUR_KERNEL.to(images.device).view(1, 1, 3, 3)
    x = images.double().reshape(n * c, 1, h, w)
    u_mask = removed.double().repeat_interleave(c, 0).unsqueeze(1)  # (N*C, 1, H, W)
    degree = F.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64, device=x.device), kernel, padding=1)

    def operator(u: torch.Tensor) -> torch.Tensor:
        return u_mask * (degree * u - F.conv2d(u, kernel, padding=1))

    b = u_mask * F.conv2d(x * (1 - u_mask), kernel, padding=1)
    u = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = (r * r).sum(dim=(1, 2, 3), keepdim=True)
    stop = (tol**2) * rr.clamp(min=1e-300)
    for _ in range(max_iter):
        if bool((rr <= stop).all()):
            break
        ap = operator(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rr / pap.clamp(min=1e-300), 0.0)
        u = u + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum(dim=(1, 2, 3), keepdim=True)
        p = r + torch.where(rr > 0, rr_new / rr.clamp(min=1e-300), 0.0) * p
        rr = rr_new
    out = torch.where(u_mask.bool(), u, x)
    return out.view(n, c, h, w).to(images.dtype)


class ROADResult(NamedTuple):
    """Attributes:
    fractions: (F,) fraction of the pixels removed.
    morf, lerf: (F,) mean target softmax probability, most / least relevant pixels removed first.
    morf_accuracy, lerf_accuracy: (F,) fraction of images still classified as the target.
    score: () mean of (lerf - morf) over the fractions (higher is better).
    """

    fractions: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor
    morf_accuracy: torch.Tensor
    lerf_accuracy: torch.Tensor
    score: torch.Tensor


class ROAD(Metric):
    """Remove And Debias: MoRF and LeRF over pixels with noisy linear imputation.

    For each fraction, the pixels ranked highest (MoRF) or lowest (LeRF) by the attribution (ties: lower
    row-major index first) are removed and imputed by `linear_imputation`, plus Gaussian noise of std
    `noise_std` (in the model's normalised input space) on the imputed pixels, drawn from a generator seeded
    with `seed` at construction.

    States (sum-reduced over processes): per-fraction sums of the target probability and of correct top-1
    predictions for MoRF and LeRF, and the image count.

    Args:
        model: classifier mapping normalised images (N, C, H, W) to logits, in eval mode.
        image_size: (H, W) in pixels.
        fractions: removed fractions, each in [0, 1) (paper: 10%, 20%, ..., 90%).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    morf_sum: torch.Tensor
    lerf_sum: torch.Tensor
    morf_correct: torch.Tensor
    lerf_correct: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        model: Classifier,
        image_size: tuple[int, int],
        fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        noise_std: float = 0.01,
        seed: int = 0,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not fractions or not all(0 <= f < 1 for f in fractions) or noise_std < 0 or batch_size < 1:
            raise ConfigError(f"ROAD needs fractions in [0, 1), noise_std >= 0 and batch_size >= 1; got "
                              f"{list(fractions)}, {noise_std}, {batch_size}")
        hide_module(self, "model", resolve_classifier(model))  # not part of the state_dict
        self.size = (int(image_size[0]), int(image_size[1]))
        self.fractions = torch.tensor(fractions, dtype=torch.float64)
        self.counts = (self.fractions * self.size[0] * self.size[1]).round().long()  # pixels removed
        self.noise_std, self.seed, self.batch_size = float(noise_std), int(seed), int(batch_size)
        self._generator: torch.Generator | None = None
        k = len(fractions)
        for name in ("morf_sum", "lerf_sum", "morf_correct", "lerf_correct"):
            self.add_state(name, torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device).manual_seed(self.seed)
        return self._generator

    def update(self, images: torch.Tensor, target: torch.Tensor | int, attributions: torch.Tensor) -> None:
        """Add a batch: images (N, C, H, W) normalised, target (N,) class indices, attributions (N, H, W)."""
        check_images(images, self.size)
        check_maps(attributions, (images.shape[0], *self.size))
        device = classifier_device(self.model, images.device)
        target = as_target(target, images.shape[0], device)
        prob, correct = self.curves(images.to(device), target, attributions.to(device))
        k = len(self.fractions)
        for name, values in (("morf_sum", prob[:, :k]), ("lerf_sum", prob[:, k:]),
                             ("morf_correct", correct[:, :k]), ("lerf_correct", correct[:, k:])):
            state = getattr(self, name)
            state += values.sum(0).to(state.device)
        self.count += images.shape[0]

    @torch.no_grad()
    def curves(
        self, images: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image (N, 2F) target probabilities and correct-prediction flags, MoRF then LeRF (float64)."""
        n, pixels = images.shape[0], self.size[0] * self.size[1]
        flat = attributions.detach().double().flatten(1)
        position = torch.empty(2, n, pixels, dtype=torch.long, device=images.device)
        ranks = torch.arange(pixels, device=images.device).expand(n, -1)
        for k, descending in enumerate((True, False)):
            order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
            position[k].scatter_(1, order, ranks)
        counts = self.counts.to(images.device)
        k = len(counts)
        generator = self._noise_generator(images.device)

        def build(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            removed = (position[j // k, i] < counts[j % k, None]).view(-1, *self.size)
            filled = linear_imputation(images[i], removed)
            noise = torch.randn(filled.shape, generator=generator, device=images.device, dtype=filled.dtype)
            return filled + self.noise_std * noise * removed.unsqueeze(1)

        def forward(batch: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(self.model(batch).double(), dim=1)
            t = target[i, None]
            return torch.cat([probs.gather(1, t), (probs.argmax(1, keepdim=True) == t).double()], dim=1)

        values = run_perturbations(forward, build, n, 2 * k, self.batch_size, images.device)
        return values[..., 0], values[..., 1]

    def compute(self) -> ROADResult:
        n = self.count.double()
        morf, lerf = self.morf_sum / n, self.lerf_sum / n
        return ROADResult(self.fractions.to(morf.device), morf, lerf, self.morf_correct / n, self.lerf_correct / n,
                          (lerf - morf).mean())
