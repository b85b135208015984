"""Strict information discarding (SID, later called CID), per image and layer, batched over layers.

Decisions (see the SID/RU paper, section 3):

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
  start). The optimisation then ends with a projection onto the constraint ``E[rho] = 1`` in expectation, not
  on a particular set of draws: ``log sigma`` is shifted by ``-log rho / s`` (a global rescaling of sigma,
  which keeps the map's shape; ``s = 2`` first, as rho ~ sigma² for a locally linear h, then the slope
  ``d log rho / d log sigma`` measured by the previous shift, since deep ReLU layers can respond much more
  weakly) until ``|rho - 1| <= tol / 5`` on the element's projection draws, and the
  draws are increased (in blocks of `eval_samples`, up to `max_eval_samples`) until the Monte-Carlo standard
  error of rho is at most `target_se` (default ``tol / 4``) relative to rho. Per draw, ``||h(x') - f||²`` can
  be far from Gaussian (at a classifier's last layers a few directions dominate, spread/mean ~ 1), so a
  fixed small number of draws would meet the constraint on those draws only. Noise block k of stream s of an
  element comes from its own generator seeded by (seed, image index, layer name, s, k).
- **Fresh check.** rho is then re-estimated on draws from an independent generator stream (again until its
  standard error is at most `target_se`): ``ratio_fresh``. Where ``|ratio_fresh - 1| > tol``, the projection
  is repeated on the union of the projection and the fresh draws and checked on a new fresh stream (at most
  `fresh_rounds` times). ``converged`` is ``|ratio_fresh - 1| <= tol``; pairs outside it are named in a warning.
- **Outputs.** pixel-wise ``H_i = log sigma_i + 0.5 log(2 pi e)`` in nats; per layer ``per_pixel = mean_i H_i``
  and ``total = C * sum_i H_i`` (the differential entropy of x' over all C x H x W input units, in nats).
- **Speed.** every (image, layer) pair is a separate batch element (times the noise draws) in ONE forward
  pass that captures all layers (`LayerFeatures`, rows sorted by layer and dropped after their layer); each
  element's loss uses only its own layer's feature. Adam, lambda and the projection act element-wise, so
  elements are independent; each element draws its noise from its own generator seeded by (seed, image
  index, layer name), so batching over layers gives the same result as one layer at a time. The schedule
  is `SIDConfig.schedule`: ``batched`` (all layers in one pass per step), ``per-layer`` (one layer at a time,
  its images batched); the default is ``batched``, the faster one measured on a 2-core CPU (VGG-16, 13 layers,
  112 px: batched 44 s, per-layer 106 s per image; the per-layer schedule repeats the projection's fixed
  work per layer). ``max_rows`` (256 here; ``auto`` in ``analysis=layerwise``)
  bounds the rows of one forward pass; ``auto`` measures the fastest (`resolve_max_rows`): on a 2-core CPU a
  pass with gradients through the default model costs 1.9x more per row at 256 rows than at 64
  (benchmarks/bench_sid_rows.py, which also prints the rows forwarded and the wall time over their floor).
  Live bars follow the steps and the projection's rows on a terminal (``progress``). The total work is the sum over layers of the network up to each layer (for VGG-16
  ~7.4x the FLOPs of conv5_3 alone), so all layers take a few times the deepest layer alone.
- **Precision.** ``precision`` of `LayerFeatures` (``bf16``: the network's forward and backward under
  autocast). log sigma, lambda, the features' differences ||h(x') - f||² and rho are fp32; rho's statistics
  (mean, standard error over draws) float64; delta_f² is estimated in fp32 by `layerwise_sid`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import groupby

import torch

from infoflow.discarding.delta_f import DeltaF2, delta_f2_for_model
from infoflow.discarding.features import LayerFeatures, noise_generator, resolve_layers
from infoflow.discarding.maps import ENTROPY_CONST, LayerMaps
from infoflow.errors import ConfigError
from infoflow.models.zoo import ZooModel
from infoflow.utils.autotune import choose_chunk, network_key, timed
from infoflow.utils.precision import resolve_precision
from infoflow.utils.progress import Advance, live_bars
from infoflow.utils.validation import check_batch_size, check_images

#: entropy of a unit Gaussian, 0.5 * log(2 pi e), nats
ALPHA = 1.5e-4
#: valid `SIDConfig.schedule` values
SCHEDULES = ("batched", "per-layer")
#: rows per pass that ``max_rows="auto"`` chooses from
ROW_CANDIDATES = (32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class SIDConfig:
    """Settings of the constrained SID optimisation (see the module docstring).

    Attributes:
        alpha: the constraint level, E||h(x') - f||² = alpha delta_f².
        steps, lr, final_lr_fraction: Adam steps on log sigma; cosine decay from lr to lr * fraction.
        samples: noise draws per (image, layer) and step.
        dual_lr: step size of the dual ascent on log lambda.
        eval_samples: noise draws per block in the final projection and the fresh check (the first block,
            and the unit the draws grow by).
        max_eval_samples: at most this many draws per (image, layer) for the projection, and again for the
            fresh check.
        tol: relative tolerance of the constraint in expectation: |E rho - 1| <= tol.
        target_se: wanted Monte-Carlo standard error of rho relative to rho; None: tol / 4.
        projection_iters: rescalings per projection.
        fresh_rounds: re-projections on the union of draws when the fresh check fails.
        max_rows: rows (elements x draws) per forward pass; more elements are optimised in chunks. ``"auto"``:
            the fastest of `ROW_CANDIDATES` for a step's pass with gradients, measured once per network,
            layers, input size, draws, precision and threads and cached (`resolve_max_rows`); the results
            do not depend on it (up to rounding).
        schedule: ``batched`` (all layers in one pass; the faster one measured) or ``per-layer`` (one layer at
            a time, its images batched); results are the same.
        seed: noise seed (each element's generator is derived from it, the image index and the layer).
    """

    alpha: float = ALPHA
    steps: int = 300
    lr: float = 0.05
    final_lr_fraction: float = 0.05
    samples: int = 4
    dual_lr: float = 0.05
    eval_samples: int = 64
    max_eval_samples: int = 16384
    tol: float = 0.05
    target_se: float | None = None
    projection_iters: int = 8
    fresh_rounds: int = 2
    max_rows: int | str = 256
    seed: int = 0
    schedule: str = "batched"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown SID schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        object.__setattr__(self, "max_rows", check_batch_size(self.max_rows, "sid.max_rows"))

    def chunks(self, elements: Sequence[tuple[int, str]], device: torch.device) -> list[list[tuple[int, str]]]:
        """`elements` (image, layer), sorted by layer, split into the chunks optimised together."""
        groups = [list(elements)] if self.schedule == "batched" else [list(g) for _, g in groupby(elements, lambda e: e[1])]
        assert isinstance(self.max_rows, int), "resolve max_rows='auto' first (resolve_max_rows)"
        per = max(1, self.max_rows // self.samples)
        return [g[i : i + per] for g in groups for i in range(0, len(g), per)]

    @property
    def se_goal(self) -> float:
        """The relative standard error of rho the projection and the fresh check aim for."""
        return self.tol / 4 if self.target_se is None else self.target_se


@dataclass
class SIDResult(LayerMaps):
    """SID of N images at L layers. Tensors are on the CPU.

    Attributes:
        layers: the L layer names, in the order requested.
        log_sigma: (N, L, H, W) learnt log noise scale, [0, 1] pixel units.
        lam: (N, L) final Lagrange multipliers.
        ratio: (N, L) achieved E||h(x') - f||² / (alpha delta_f²) on the draws of the final projection
            (in-sample: within tol / 5 of 1 by construction).
        ratio_se: (N, L) Monte-Carlo standard error of `ratio` (its spread over the draws / sqrt(draws)).
        ratio_fresh: (N, L) the same ratio on independent draws (an unbiased estimate of E rho).
        ratio_fresh_se: (N, L) its Monte-Carlo standard error.
        draws: (N, L) noise draws of the final projection (the fresh check used about as many).
        delta_f2: (L,) the delta_f² used.
        channels: C, the input channels sigma is shared over.
        tol: the relative tolerance of the constraint.
    """

    layers: list[str]
    log_sigma: torch.Tensor
    lam: torch.Tensor
    ratio: torch.Tensor
    ratio_se: torch.Tensor
    ratio_fresh: torch.Tensor
    ratio_fresh_se: torch.Tensor
    draws: torch.Tensor
    delta_f2: torch.Tensor
    channels: int
    tol: float

    @property
    def maps(self) -> torch.Tensor:
        """(N, L, H, W) pixel-wise SID H_i = log sigma_i + 0.5 log(2 pi e), nats."""
        return self.log_sigma + ENTROPY_CONST

    @property
    def converged(self) -> torch.Tensor:
        """(N, L) bool: the constraint holds within `tol` on fresh draws."""
        return (self.ratio_fresh - 1).abs() <= self.tol


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
        advance: Advance = lambda key, amount=1: None,
    ) -> None:
        self.features, self.x01, self.elements, self.cfg, self.advance = features, x01, elements, cfg, advance
        self.images = torch.tensor([n for n, _ in elements], device=x01.device)
        self.layers = [name for _, name in elements]
        self.targets = {name: clean[name] for name in dict.fromkeys(self.layers)}
        self.scale = scale
        self.step_gens = [noise_generator(cfg.seed, i, name, "step") for i, name in elements]

    def step_noise(self) -> torch.Tensor:
        """(B, S, C, H, W) fresh noise, one generator per element."""
        shape = (self.cfg.samples, *self.x01.shape[1:])
        return torch.stack([torch.randn(shape, generator=g) for g in self.step_gens]).to(self.x01)

    def ratios(self, el: Sequence[int], log_sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(b, S) ||h(x') - f||² / (alpha delta_f²) per noise draw, for elements `el` (indices in ascending
        order, repeats allowed) with their `log_sigma` (b, 1, H, W) and `noise` (b, S, C, H, W)."""
        s = noise.shape[1]
        images = self.images[torch.as_tensor(list(el), dtype=torch.long, device=self.images.device)]
        noisy = (self.x01[images][:, None] + log_sigma.exp()[:, None] * noise).flatten(0, 1)
        layers = [self.layers[i] for i in el]
        counts = [layers.count(name) for name in self.features.order]
        feats = self.features(noisy, groups=[c * s for c in counts])
        out = []
        for name, count in zip(self.features.order, counts, strict=True):
            if count == 0:
                continue
            lo = layers.index(name)
            target = self.targets[name][images[lo : lo + count]]
            diff = feats[name].reshape(count, s, -1) - target.reshape(count, 1, -1)
            out.append(diff.pow(2).sum(-1) / self.scale[name])
        return torch.cat(out)

    def block_ratios(self, blocks: Sequence[tuple[int, str, int]], log_sigma: torch.Tensor) -> torch.Tensor:
        """(P, E) per-draw ratios of noise block k of stream s for element e, for each (e, s, k) in `blocks`
        (sorted by e), with E = `eval_samples` draws per block from the block's own generator."""
        e_draws = self.cfg.eval_samples
        shape = (e_draws, *self.x01.shape[1:])
        assert isinstance(self.cfg.max_rows, int)
        per = max(1, self.cfg.max_rows // e_draws)
        out = []
        with torch.no_grad():
            for start in range(0, len(blocks), per):
                chunk = blocks[start : start + per]
                el = [e for e, _, _ in chunk]
                noise = torch.stack([
                    torch.randn(shape, generator=noise_generator(self.cfg.seed, *self.elements[e], s, k))
                    for e, s, k in chunk
                ]).to(self.x01)
                out.append(self.ratios(el, log_sigma[el], noise))
                self.advance("rows", len(chunk) * e_draws)
        return torch.cat(out) if out else torch.empty(0, e_draws)


class _Draws:
    """Per element: the noise blocks (stream, index) drawn so far and their per-draw ratios at the current sigma."""

    def __init__(self, problem: _Problem) -> None:
        self.problem = problem
        b = len(problem.elements)
        self.blocks: list[list[tuple[str, int]]] = [[] for _ in range(b)]
        self.values: list[torch.Tensor] = [torch.empty(0) for _ in range(b)]
        self.slope = [2.0] * b  # d log rho / d log sigma, learnt by `_rescale`

    def add(self, new: Mapping[int, Sequence[tuple[str, int]]], log_sigma: torch.Tensor) -> None:
        """Draw the blocks `new[e]` for each element e and append their ratios."""
        flat = sorted((e, s, k) for e, keys in new.items() for s, k in keys)
        d = self.problem.block_ratios(flat, log_sigma)
        for (e, s, k), row in zip(flat, d, strict=True):
            self.blocks[e].append((s, k))
            self.values[e] = torch.cat([self.values[e], row.to(self.values[e])])

    def recompute(self, els: Sequence[int], log_sigma: torch.Tensor) -> None:
        """Recompute the ratios of elements `els` on their drawn blocks (after `log_sigma` changed)."""
        keys = {e: self.blocks[e] for e in els}
        for e in els:
            self.blocks[e], self.values[e] = [], torch.empty(0)
        self.add(keys, log_sigma)

    def next_blocks(self, e: int, stream: str, count: int) -> list[tuple[str, int]]:
        """`count` new block keys of `stream` for element e."""
        start = sum(s == stream for s, _ in self.blocks[e])
        return [(stream, k) for k in range(start, start + count)]

    def stats(self, els: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rho (b,), its Monte-Carlo standard error (b,) and the number of draws (b,) of elements `els`."""
        rho, se, n = (torch.empty(len(els), dtype=torch.float64) for _ in range(3))
        for i, e in enumerate(els):
            v = self.values[e].double()
            rho[i], n[i] = v.mean(), len(v)
            se[i] = v.std() / math.sqrt(len(v)) if len(v) > 1 else math.nan
        return rho, se, n

    def grow(self, els: Sequence[int], stream: str, log_sigma: torch.Tensor) -> bool:
        """Add blocks of `stream` until each element's relative standard error is at most the config's goal,
        or it has `max_eval_samples` draws; whether any were added. Each round adds the blocks the current
        spread says are needed (with 20 % to spare)."""
        cfg = self.problem.cfg
        cap = max(1, math.ceil(cfg.max_eval_samples / cfg.eval_samples))
        grew = False
        while True:
            rho, se, _ = self.stats(els)
            new = {}
            for e, r, s in zip(els, rho.tolist(), se.tolist(), strict=True):
                have = len(self.blocks[e])
                if have >= cap or s <= cfg.se_goal * abs(r):
                    continue
                want = 2 * have if math.isnan(s) or r == 0 else math.ceil(1.2 * have * (s / (cfg.se_goal * r)) ** 2)
                new[e] = self.next_blocks(e, stream, min(cap, max(want, have + 1)) - have)
            if not new:
                return grew
            self.add(new, log_sigma)
            grew = True


def _rescale(draws: _Draws, els: Sequence[int], log_sigma: torch.Tensor) -> None:
    """Shift `log_sigma` (in place) of elements `els` until |rho - 1| <= tol / 5 on their current draws, at most
    `projection_iters` times. The first shift is -0.5 log rho (rho ~ sigma², a locally linear h); later ones
    use the slope d log rho / d log sigma measured by the previous shift (secant), as deep layers of ReLU
    networks can respond far more weakly."""
    cfg = draws.problem.cfg
    slope = draws.slope
    last: dict[int, tuple[float, float]] = {}  # element -> (its log rho, the shift applied after it)
    for _ in range(cfg.projection_iters):
        rho, _, _ = draws.stats(els)
        log_rho = dict(zip(els, rho.clamp_min(1e-12).log().tolist(), strict=True))
        off = [e for e in els if abs(math.exp(log_rho[e]) - 1) > cfg.tol / 5]
        if not off:
            return
        shifts = []
        for e in off:
            if e in last and abs(last[e][1]) > 1e-9:
                slope[e] = min(4.0, max(0.25, (log_rho[e] - last[e][0]) / last[e][1]))
            shifts.append(-log_rho[e] / slope[e])
            last[e] = (log_rho[e], shifts[-1])
        log_sigma[off] += torch.tensor(shifts, dtype=log_sigma.dtype, device=log_sigma.device).view(-1, 1, 1, 1)
        draws.recompute(off, log_sigma)


def _settle(draws: _Draws, els: Sequence[int], log_sigma: torch.Tensor, stream: str, grow: bool) -> None:
    """`_rescale` onto the constraint; with `grow`, first and after each rescaling more draws of `stream` until
    rho's standard error is small enough (`_Draws.grow`), rescaling again when draws were added."""
    _rescale(draws, els, log_sigma)
    for _ in range(4 if grow else 0):
        if not draws.grow(els, stream, log_sigma):
            return
        _rescale(draws, els, log_sigma)


def _meet_constraint(problem: _Problem, log_sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Project `log_sigma` (in place) onto E rho = 1 and check it on fresh draws (module docstring).

    Returns: rho, its standard error, the fresh rho, its standard error, draws of the projection (all (B,)).
    """
    cfg = problem.cfg
    els = list(range(len(problem.elements)))
    proj = _Draws(problem)
    proj.add({e: proj.next_blocks(e, "eval", 1) for e in els}, log_sigma)
    _settle(proj, els, log_sigma, "eval", grow=True)  # close to 1 on the first block first (cheap), then grow
    fresh = _Draws(problem)
    pending = els
    for round_ in range(cfg.fresh_rounds + 1):
        stream = f"fresh{round_}"
        fresh.add({e: fresh.next_blocks(e, stream, 1) for e in pending}, log_sigma)
        fresh.grow(pending, stream, log_sigma)
        rho_f, _, _ = fresh.stats(pending)
        bad = [e for e, r in zip(pending, rho_f.tolist(), strict=True) if abs(r - 1) > cfg.tol]
        if not bad or round_ == cfg.fresh_rounds:
            break
        for e in bad:  # the fresh draws join the projection's; a new stream checks again
            proj.blocks[e] += fresh.blocks[e]
            proj.values[e] = torch.cat([proj.values[e], fresh.values[e]])
            fresh.blocks[e], fresh.values[e] = [], torch.empty(0)
        _settle(proj, bad, log_sigma, "eval", grow=True)
        pending = bad
    rho, se, n = proj.stats(els)
    rho_f, se_f, _ = fresh.stats(els)
    return rho, se, rho_f, se_f, n


def _optimize(problem: _Problem) -> tuple[torch.Tensor, ...]:
    """Constrained SID of all elements: log_sigma (B, 1, H, W), lambda (B,), then `_meet_constraint`'s (B,)."""
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
        problem.advance("steps", 1)
    log_sigma = log_sigma.detach()
    return (log_sigma, log_lam.exp(), *_meet_constraint(problem, log_sigma))


def resolve_max_rows(features: LayerFeatures, x01: torch.Tensor, names: Sequence[str], cfg: SIDConfig) -> SIDConfig:
    """`cfg` with ``max_rows="auto"`` replaced by the fastest of `ROW_CANDIDATES` (up to the rows one step
    needs) per row of a step's pass: rows spread evenly over the layers `names`, with the input gradient.

    Measured once per (network, layers, input size, draws per step, device, precision, threads), best of 3
    after a warm-up, and cached (`infoflow.utils.autotune`)."""
    if cfg.max_rows != "auto":
        return cfg
    need = x01.shape[0] * len(names) * cfg.samples
    candidates = [c for c in ROW_CANDIDATES if c <= max(need, ROW_CANDIDATES[0])]
    wanted = set(names)
    layers = [n for n in features.order if n in wanted]

    def step_pass(rows: int) -> None:
        counts = [rows // len(layers) + (i < rows % len(layers)) for i in range(len(layers))]
        groups = [counts[layers.index(n)] if n in wanted else 0 for n in features.order]
        x = x01[:1].expand(rows, *x01.shape[1:]).clone().requires_grad_(True)
        feats = features(x + 0.01, groups=groups)
        torch.autograd.grad(sum(f.pow(2).sum() for f in feats.values()), [x])

    key = {"kind": "sid_rows", **network_key(features.model), "layers": layers,
           "input": list(x01.shape[1:]), "samples": cfg.samples, "candidates": candidates}
    rows = choose_chunk(key, timed(step_pass, x01.device), x01.device, str(features.precision), candidates)
    return replace(cfg, max_rows=rows)


def compute_sid(
    features: LayerFeatures,
    images01: torch.Tensor,
    delta_f2: Mapping[str, float | DeltaF2],
    config: SIDConfig = SIDConfig(),
    layers: Sequence[str] | None = None,
    progress: bool | None = None,
) -> SIDResult:
    """Constrained SID of every image in `images01` (N, C, H, W), [0, 1] pixel space, at `layers`.

    Args:
        features: the network and its layers (all of them are analysed unless `layers` is given).
        delta_f2: layer name -> delta_f² (float or `DeltaF2`), e.g. from `delta_f2_for_model`.
        layers: a subset of `features.paths` (names), in the order wanted in the result.
        progress: live bars over the steps and the projection's rows (`infoflow.utils.progress.live_bars`):
            None on a terminal only, False never (e.g. inside Lightning's bars).
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
    with torch.no_grad():
        clean = features(images01)
    cfg = resolve_max_rows(features, images01, names, config)
    order = {name: i for i, name in enumerate(features.order)}
    elements = sorted(
        ((n, name) for name in names for n in range(images01.shape[0])), key=lambda e: order[e[1]]
    )
    scale = {n: cfg.alpha * v for n, v in df2.items()}
    parts = []
    chunks = cfg.chunks(elements, images01.device)
    bars = {"steps": (f"SID steps ({len(elements)} image x layer pairs)", cfg.steps * len(chunks), "steps"),
            "rows": ("SID projection and fresh check", None, "rows")}
    with live_bars(bars, progress) as advance:
        for chunk in chunks:
            parts.append(_optimize(_Problem(features, images01, clean, chunk, scale, cfg, advance)))
    log_sigma, *values = (torch.cat(t).cpu() for t in zip(*parts, strict=True))
    n, (h, w) = images01.shape[0], images01.shape[-2:]
    col = {name: j for j, name in enumerate(names)}
    out_sigma = torch.empty(n, len(names), h, w)
    per_pair = [torch.empty(n, len(names)) for _ in values]  # lam, rho, se, rho_fresh, se_fresh, draws
    for i, (img, name) in enumerate(elements):
        out_sigma[img, col[name]] = log_sigma[i, 0]
        for out, v in zip(per_pair, values, strict=True):
            out[img, col[name]] = v[i]
    delta = torch.tensor([df2[k] for k in names], dtype=torch.float64)
    result = SIDResult(names, out_sigma, *per_pair, delta, images01.shape[1], cfg.tol)
    bad = (~result.converged).nonzero().tolist()
    if bad:
        pairs = ", ".join(
            f"(image {i}, {names[j]}: {result.ratio_fresh[i, j]:.3f} +- {result.ratio_fresh_se[i, j]:.3f})"
            for i, j in bad
        )
        warnings.warn(
            f"SID constraint not met within {cfg.tol:.0%} on fresh noise draws (ratio +- standard error) for "
            f"{pairs}; more draws (max_eval_samples, eval_samples) or steps may help",
            stacklevel=2,
        )
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
    precision: str | int = 32,
    progress: bool | None = None,
) -> SIDResult:
    """SID of a zoo model at `layers` (paper names; all conv layers by default).

    delta_f² comes from `cache_dir` when cached, else it is estimated (in fp32) on `delta_f2_images`
    (default: `images01`; pass a larger sample of the data set for a better average) and cached.
    `precision`: of the network passes of the optimisation (module docstring); `progress`: `compute_sid`'s.
    """
    model.check_inputs(images01)
    paths = resolve_layers(model, layers)
    features = LayerFeatures(model.module, paths, mean, std).to(images01.device)
    ref = images01 if delta_f2_images is None else delta_f2_images
    df2 = delta_f2_for_model(
        model.name, model.weights, features, ref, cache_dir, tau, delta_f2_samples, config.seed
    )
    features.precision = resolve_precision(precision, images01.device)
    return compute_sid(features, images01, df2, config, progress=progress)
