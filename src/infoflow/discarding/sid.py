"""Strict information discarding (SID, later called CID), per image and layer, batched over layers.

Decisions (see REFERENCE.md §4 and the SID/RU paper, section 3):

- **Noise space.** Images live in the [0, 1] pixel space; the noisy input is ``x' = x + sigma * delta``
  with ``delta ~ N(0, I)`` there, and the network sees ``normalise(x')`` (no clamping, which would break
  the Gaussian model). Entropies are therefore in nats per pixel of [0, 1]-scaled images, comparable
  across models whatever their normalisation.
- **Parameterisation.** ``log sigma`` is learnt, one value per pixel at full input resolution, shared over
  the colour channels (the same sigma for R, G and B of a pixel; the draws delta are independent).
- **Objective.** maximise ``mean_i log sigma_i`` subject to ``rho = E||h(x') - f||² / (alpha delta_f²) = 1``,
  ``alpha = 1.5e-4``, ``f = h(x)``, ``delta_f²`` from `delta_f`. Lagrangian per (image, layer):
  ``rho - lambda * mean_i log sigma_i`` (the mean over pixels only rescales the paper's lambda).
- **Meeting the constraint.** Adam on ``log sigma`` (cosine-decayed learning rate, `samples` noise draws per
  step) together with dual ascent on ``log lambda`` per (image, layer): ``log lambda -= dual_lr * log rho``
  (for a locally linear h the optimum for a given lambda has ``rho = lambda / 2``, hence ``lambda = 2`` to
  start). The optimisation then ends with a projection onto the constraint: with `eval_samples` fixed noise
  draws per (image, layer), ``log sigma`` is shifted by ``-0.5 log rho`` (a global rescaling of sigma, which
  keeps the map's shape) until ``|rho - 1| <= tol / 5``. The achieved ``rho`` on those draws is reported
  with its Monte-Carlo standard error; ``|rho - 1| <= tol`` (default 5 %) counts as converged, otherwise a
  warning names the pairs. (The estimate itself is uncertain by ``ratio_se``, typically 1-3 % with 64 draws.)
- **Outputs.** pixel-wise ``H_i = log sigma_i + 0.5 log(2 pi e)`` in nats; per layer ``per_pixel = mean_i H_i``
  and ``total = C * sum_i H_i`` (the differential entropy of x' over all C x H x W input units, in nats).
- **Speed.** every (image, layer) pair is a separate batch element (times the noise draws) in ONE forward
  pass that captures all layers (`LayerFeatures`, rows sorted by layer and dropped after their layer); each
  element's loss uses only its own layer's feature. Adam, lambda and the projection act element-wise, so
  elements are independent; each element draws its noise from its own generator seeded by (seed, image
  index, layer name), so batching over layers gives the same result as one layer at a time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from infoflow.discarding.delta_f import DeltaF2, delta_f2_for_model
from infoflow.discarding.features import LayerFeatures, noise_generator, resolve_layers
from infoflow.models.zoo import ZooModel
from infoflow.utils.validation import check_images

#: entropy of a unit Gaussian, 0.5 * log(2 pi e), nats
ENTROPY_CONST = 0.5 * math.log(2 * math.pi * math.e)
ALPHA = 1.5e-4


@dataclass(frozen=True)
class SIDConfig:
    """Settings of the constrained SID optimisation (see the module docstring).

    Attributes:
        alpha: the constraint level, E||h(x') - f||² = alpha delta_f².
        steps, lr, final_lr_fraction: Adam steps on log sigma; cosine decay from lr to lr * fraction.
        samples: noise draws per (image, layer) and step.
        dual_lr: step size of the dual ascent on log lambda.
        eval_samples, tol, projection_iters: the final projection (fixed draws, tolerance, iterations).
        max_rows: rows (elements x draws) per forward pass; more elements are optimised in chunks.
        seed: noise seed (each element's generator is derived from it, the image index and the layer).
    """

    alpha: float = ALPHA
    steps: int = 300
    lr: float = 0.05
    final_lr_fraction: float = 0.05
    samples: int = 4
    dual_lr: float = 0.05
    eval_samples: int = 64
    tol: float = 0.05
    projection_iters: int = 8
    max_rows: int = 256
    seed: int = 0


@dataclass
class SIDResult:
    """SID of N images at L layers. Tensors are on the CPU.

    Attributes:
        layers: the L layer names, in the order requested.
        log_sigma: (N, L, H, W) learnt log noise scale, [0, 1] pixel units.
        lam: (N, L) final Lagrange multipliers.
        ratio: (N, L) achieved E||h(x') - f||² / (alpha delta_f²) on `eval_samples` draws.
        ratio_se: (N, L) Monte-Carlo standard error of `ratio` (its spread over the draws / sqrt(draws)).
        delta_f2: (L,) the delta_f² used.
        channels: C, the input channels sigma is shared over.
        tol: the relative tolerance of the constraint.
    """

    layers: list[str]
    log_sigma: torch.Tensor
    lam: torch.Tensor
    ratio: torch.Tensor
    ratio_se: torch.Tensor
    delta_f2: torch.Tensor
    channels: int
    tol: float

    @property
    def maps(self) -> torch.Tensor:
        """(N, L, H, W) pixel-wise SID H_i = log sigma_i + 0.5 log(2 pi e), nats."""
        return self.log_sigma + ENTROPY_CONST

    @property
    def per_pixel(self) -> torch.Tensor:
        """(N, L) mean of the map over pixels, nats per pixel (= nats per input unit)."""
        return self.maps.mean((-2, -1))

    @property
    def total(self) -> torch.Tensor:
        """(N, L) entropy of x' over all C x H x W input units, nats."""
        return self.channels * self.maps.sum((-2, -1))

    @property
    def converged(self) -> torch.Tensor:
        """(N, L) bool: the constraint holds within `tol`."""
        return (self.ratio - 1).abs() <= self.tol

    def layer(self, name: str) -> torch.Tensor:
        """(N, H, W) SID map of one layer."""
        return self.maps[:, self.layers.index(name)]


class _Problem:
    """The SID problems of a set of (image, layer) elements, sorted by layer in forward order."""

    def __init__(
        self,
        features: LayerFeatures,
        x01: torch.Tensor,
        clean: Mapping[str, torch.Tensor],
        elements: list[tuple[int, str]],
        scale: Mapping[str, float],
        cfg: SIDConfig,
    ) -> None:
        self.features, self.x01, self.elements, self.cfg = features, x01, elements, cfg
        self.images = torch.tensor([n for n, _ in elements], device=x01.device)
        self.layers = [name for _, name in elements]
        self.targets = {name: clean[name] for name in dict.fromkeys(self.layers)}
        self.scale = scale
        self.step_gens = [noise_generator(cfg.seed, i, name, "step") for i, name in elements]

    def step_noise(self) -> torch.Tensor:
        """(B, S, C, H, W) fresh noise, one generator per element."""
        shape = (self.cfg.samples, *self.x01.shape[1:])
        return torch.stack([torch.randn(shape, generator=g) for g in self.step_gens]).to(self.x01)

    def eval_noise(self, idx: range) -> torch.Tensor:
        """(b, E, C, H, W) the fixed evaluation noise of elements `idx` (the same on every call)."""
        shape = (self.cfg.eval_samples, *self.x01.shape[1:])
        gens = [noise_generator(self.cfg.seed, *self.elements[i], "eval") for i in idx]
        return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.x01)

    def ratios(self, idx: range, log_sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(b, S) ||h(x') - f||² / (alpha delta_f²) per noise draw, for elements `idx` (a contiguous range)
        with their `log_sigma` (b, 1, H, W) and `noise` (b, S, C, H, W); rho is the mean over S."""
        s = noise.shape[1]
        x = self.x01[self.images[idx.start : idx.stop]]
        noisy = (x[:, None] + log_sigma.exp()[:, None] * noise).flatten(0, 1)
        layers = self.layers[idx.start : idx.stop]
        counts = [layers.count(name) for name in self.features.order]
        feats = self.features(noisy, groups=[c * s for c in counts])
        images = self.images[idx.start : idx.stop]
        out = []
        for name, count in zip(self.features.order, counts, strict=True):
            if count == 0:
                continue
            lo = layers.index(name)
            target = self.targets[name][images[lo : lo + count]]
            diff = feats[name].view(count, s, -1) - target.reshape(count, 1, -1)
            out.append(diff.pow(2).sum(-1) / self.scale[name])
        return torch.cat(out)

    def eval_ratios(self, log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rho (B,) of all elements on the fixed evaluation noise and its Monte-Carlo standard error (B,)."""
        per = max(1, self.cfg.max_rows // self.cfg.eval_samples)
        out = []
        with torch.no_grad():
            for start in range(0, len(self.elements), per):
                idx = range(start, min(start + per, len(self.elements)))
                out.append(self.ratios(idx, log_sigma[start : idx.stop], self.eval_noise(idx)))
        d = torch.cat(out)
        se = d.std(1) / math.sqrt(d.shape[1]) if d.shape[1] > 1 else torch.full_like(d[:, 0], math.nan)
        return d.mean(1), se


def _project(
    problem: _Problem, log_sigma: torch.Tensor, iters: int, precision: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift `log_sigma` (in place) by -0.5 log rho per element until |rho - 1| <= precision; (rho, se)."""
    rho, se = problem.eval_ratios(log_sigma)
    for _ in range(iters):
        off = (rho - 1).abs() > precision
        if not off.any():
            break
        log_sigma[off] -= 0.5 * rho[off].clamp_min(1e-12).log().view(-1, 1, 1, 1)
        rho, se = problem.eval_ratios(log_sigma)
    return rho, se


def _optimize(problem: _Problem) -> tuple[torch.Tensor, ...]:
    """Constrained SID of all elements: log_sigma (B, 1, H, W), lambda (B,), rho (B,), its standard error (B,)."""
    cfg = problem.cfg
    b = len(problem.elements)
    h, w = problem.x01.shape[-2:]
    full = range(0, b)
    log_sigma = torch.full((b, 1, h, w), 0.5 * math.log(cfg.alpha), device=problem.x01.device)
    with torch.no_grad():  # start on the constraint (an isotropic sigma)
        for _ in range(2):
            rho = problem.ratios(full, log_sigma, problem.step_noise()).mean(1)
            log_sigma -= 0.5 * rho.clamp_min(1e-12).log().view(-1, 1, 1, 1)
    log_sigma.requires_grad_(True)
    log_lam = torch.full((b,), math.log(2.0), device=log_sigma.device)
    opt = torch.optim.Adam([log_sigma], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, max(cfg.steps, 1), eta_min=cfg.lr * cfg.final_lr_fraction
    )
    for _ in range(cfg.steps):
        rho = problem.ratios(full, log_sigma, problem.step_noise()).mean(1)
        loss = (rho - log_lam.exp() * log_sigma.mean((1, 2, 3))).sum()
        (log_sigma.grad,) = torch.autograd.grad(loss, [log_sigma])
        opt.step()
        sched.step()
        log_lam -= cfg.dual_lr * rho.detach().clamp_min(1e-12).log().clamp(-1.0, 1.0)
    log_sigma = log_sigma.detach()
    rho, se = _project(problem, log_sigma, cfg.projection_iters, cfg.tol / 5)
    return log_sigma, log_lam.exp(), rho, se


def compute_sid(
    features: LayerFeatures,
    images01: torch.Tensor,
    delta_f2: Mapping[str, float | DeltaF2],
    config: SIDConfig = SIDConfig(),
    layers: Sequence[str] | None = None,
) -> SIDResult:
    """Constrained SID of every image in `images01` (N, C, H, W), [0, 1] pixel space, at `layers`.

    Args:
        features: the network and its layers (all of them are analysed unless `layers` is given).
        delta_f2: layer name -> delta_f² (float or `DeltaF2`), e.g. from `delta_f2_for_model`.
        layers: a subset of `features.paths` (names), in the order wanted in the result.
    """
    check_images(images01, dtype=next((p.dtype for p in features.parameters() if p.is_floating_point()), None))
    if images01.dim() != 4 or images01.shape[0] == 0:
        raise ValueError(f"images must be (N, C, H, W) with N >= 1, got {tuple(images01.shape)}")
    if images01.min() < -0.05 or images01.max() > 1.05:
        raise ValueError(
            "images must be in the [0, 1] pixel space (undo the normalisation, e.g. denormalize)"
        )
    names = list(features.paths if layers is None else layers)
    unknown = [n for n in names if n not in features.paths]
    if unknown:
        raise ValueError(f"layers {unknown} are not among the extracted layers {list(features.paths)}")
    df2 = {n: float(delta_f2[n].value if isinstance(delta_f2[n], DeltaF2) else delta_f2[n]) for n in names}
    if any(not v > 0 for v in df2.values()):
        raise ValueError(f"delta_f² must be positive, got {df2}")
    cfg = config
    with torch.no_grad():
        clean = features(images01)
    order = {name: i for i, name in enumerate(features.order)}
    elements = sorted(
        ((n, name) for name in names for n in range(images01.shape[0])), key=lambda e: order[e[1]]
    )
    scale = {n: cfg.alpha * v for n, v in df2.items()}
    per_chunk = max(1, cfg.max_rows // cfg.samples)
    parts = []
    for start in range(0, len(elements), per_chunk):
        problem = _Problem(features, images01, clean, elements[start : start + per_chunk], scale, cfg)
        parts.append(_optimize(problem))
    log_sigma, lam, rho, se = (torch.cat(t).cpu() for t in zip(*parts, strict=True))
    n, (h, w) = images01.shape[0], images01.shape[-2:]
    col = {name: j for j, name in enumerate(names)}
    out_sigma = torch.empty(n, len(names), h, w)
    out_lam, out_rho, out_se = (torch.empty(n, len(names)) for _ in range(3))
    for i, (img, name) in enumerate(elements):
        j = col[name]
        out_sigma[img, j] = log_sigma[i, 0]
        out_lam[img, j], out_rho[img, j], out_se[img, j] = lam[i], rho[i], se[i]
    delta = torch.tensor([df2[k] for k in names], dtype=torch.float64)
    result = SIDResult(names, out_sigma, out_lam, out_rho, out_se, delta, images01.shape[1], cfg.tol)
    bad = (~result.converged).nonzero().tolist()
    if bad:
        pairs = ", ".join(f"(image {i}, {names[j]}: {result.ratio[i, j]:.3f})" for i, j in bad)
        warnings.warn(f"SID constraint not met within {cfg.tol:.0%} for {pairs}", stacklevel=2)
    return result


def layerwise_sid(
    model: ZooModel,
    images01: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    layers: Sequence[str] | None = None,
    config: SIDConfig = SIDConfig(),
    cache_dir: str | None = None,
    delta_f2_images: torch.Tensor | None = None,
    tau: float = 1e-3,
    delta_f2_samples: int = 16,
) -> SIDResult:
    """SID of a zoo model at `layers` (paper names; all conv layers by default).

    delta_f² comes from `cache_dir` when cached, else it is estimated on `delta_f2_images` (default:
    `images01`; pass a larger sample of the data set for a better average) and cached.
    """
    model.check_inputs(images01)
    paths = resolve_layers(model, layers)
    features = LayerFeatures(model.module, paths, mean, std).to(images01.device)
    ref = images01 if delta_f2_images is None else delta_f2_images
    df2 = delta_f2_for_model(
        model.name, model.weights, features, ref, cache_dir, tau, delta_f2_samples, config.seed
    )
    return compute_sid(features, images01, df2, config)
