"""The Per-Sample Bottleneck (Schulz et al. 2020, section 3.2): a mask alpha fitted to each image.

Exactly the reference algorithm (alpha = 5 at the start, Adam with lr 1 on alpha, 10 steps of 10 noisy
copies, loss CE + beta * L_I with L_I the mean capacity over the C*h*w feature elements, i.e. beta in
units of 1/k), computed faster with unchanged results:
- the classifier is frozen, so no weight gradients are computed;
- the head (input up to the layer) runs once per image; each step runs only the tail, on a network
  without in-place modules (`infoflow.models.inplace`), so the cached feature stays the layer's output;
- many images are fitted at once, each with its own alpha: Adam is element-wise and the loss is a sum
  of per-image losses, so this equals fitting them one at a time with the same noise;
- `explain_grid` fits several betas of one image in one batched pass (each element carries its own
  beta, the head runs once per image): the same independence, so it equals one fit per beta.

Precision (``precision``, see `infoflow.utils.precision`): with ``bf16`` only the network's passes (the
head once, the tail at every step, and the tail's backward) run under autocast; their outputs are cast to
fp32 at once. alpha, lam, Adam's state, the capacity (nats), the cross-entropy and the heatmaps (bits) stay
fp32, and the feature statistics are float64 sums (`Estimator`, always fitted with the fp32 network). The
reduced-precision passes run a frozen copy made at construction (`prepare_network`: batch norms folded,
bf16 weights, channels-last), so later changes to the model's weights need a new `PerSampleIBA`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from infoflow.errors import ConfigError
from infoflow.iba.bottleneck import Bottleneck, capacity_to_heatmap
from infoflow.iba.estimator import Estimator, NotEstimatedError, fit_estimator
from infoflow.interface import METHODS, Attribution, check_inputs_and_target
from infoflow.models.split import SplitModel
from infoflow.models.zoo import ZooModel
from infoflow.utils.autotune import CANDIDATES, choose_chunk, timed
from infoflow.utils.modules import frozen
from infoflow.utils.precision import autocast, prepare_network, resolve_precision, to_fp32
from infoflow.utils.validation import check_batch_size, check_beta, check_count, check_number


@dataclass
class IBAResult:
    """Per-image output of the Per-Sample Bottleneck.

    Attributes:
        heatmap: (N, H, W) bits per input pixel; each image's total is its total bits.
        capacity: (N, C, h, w) nats per feature element, from the last optimisation step.
        prob_with: (N,) target probability with the bottleneck (mean over the last step's noisy copies).
        prob_without: (N,) target probability of the unchanged model.
    """

    heatmap: torch.Tensor
    capacity: torch.Tensor
    prob_with: torch.Tensor
    prob_without: torch.Tensor

    @property
    def total_bits(self) -> torch.Tensor:
        """(N,) (or (N, B) for a grid) total information in bits that passes the bottleneck."""
        return self.heatmap.sum((-2, -1))

    @classmethod
    def empty(cls, image_size: tuple[int, int], feature_shape: tuple[int, ...], device: torch.device) -> IBAResult:
        """The result for a batch of 0 images: heatmap (0, H, W), capacity (0, C, h, w), probabilities (0,)."""
        return cls(torch.zeros((0, *image_size), device=device), torch.zeros((0, *feature_shape), device=device),
                   torch.zeros(0, device=device), torch.zeros(0, device=device))


def noise_generators(seed: int | None, n: int, device: torch.device) -> list[torch.Generator] | None:
    """One generator per image, seeded ``seed + i``, so image i draws the same noise in any batch."""
    if seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


def draw_noise(shape: tuple[int, ...], generators: list[torch.Generator] | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise (N, *shape): row i from ``generators[i]`` (or the global RNG when None)."""
    if generators is None:
        return torch.randn(shape, device=device)
    return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generators])


@METHODS.register("iba")
class PerSampleIBA(Attribution):
    """Per-Sample Bottleneck attribution at one layer; heatmaps in bits per pixel.

    Args:
        model: the zoo model (frozen during the fit).
        layer: paper layer name or module path.
        beta: weight of the information loss, in units of 1/k (k = C*h*w), so beta=10 means 10/k; finite and
            >= 0. beta=0 is valid: no information penalty, the mask only keeps the target's probability.
        steps, lr, copies, init_alpha: optimisation settings (reference: 10, 1.0, 10, 5.0).
        sigma: Gaussian smoothing of lam, in feature pixels (reference: 1).
        batch_size: images fitted at once, or ``"auto"``: chosen by timing (`chunk_size`).
        seed: if set, image i of each call draws its noise from a generator seeded ``seed + i``.
        estimator: fitted feature statistics; else call `fit` first.
        estimator_samples: images used by `fit`; estimator_cache: file to load/save them.
        fold_fp32: in fp32, run the fit on the prepared copy too (batch norms folded, channels-last;
            `prepare_network`): equal to the unprepared network up to rounding.
    """

    unit = "bits/pixel"
    requires_fit = True

    def __init__(
        self,
        model: ZooModel,
        layer: str,
        beta: float = 10.0,
        steps: int = 10,
        lr: float = 1.0,
        copies: int = 10,
        init_alpha: float = 5.0,
        sigma: float = 1.0,
        batch_size: int | str = 8,
        seed: int | None = None,
        estimator: Estimator | None = None,
        estimator_samples: int = 5000,
        estimator_cache: str | Path | None = None,
        use_fx: bool = True,
        precision: str | int = 32,
        fold_fp32: bool = False,
    ) -> None:
        beta, steps, copies = check_beta(beta), check_count(steps, "steps"), check_count(copies, "copies")
        lr, sigma = check_number(lr, "lr", strict=True), check_number(sigma, "sigma")
        batch_size, estimator_samples = check_batch_size(batch_size), check_count(estimator_samples, "estimator_samples")
        super().__init__(model)
        self.layer = model.layer_path(layer)
        self.beta, self.steps, self.lr, self.copies = beta, steps, lr, copies
        self.init_alpha, self.sigma, self.batch_size, self.seed = init_alpha, sigma, batch_size, seed
        self.estimator_samples, self.estimator_cache = estimator_samples, estimator_cache
        self.split = SplitModel(model.module, self.layer, use_fx=use_fx)
        self.precision = resolve_precision(precision, self.device)
        #: the network the fit runs: `split` in fp32, else a prepared copy (module docstring)
        self.fast = self.split if self.precision == "32" and not fold_fp32 else SplitModel(
            prepare_network(model.module, self.precision, torch.zeros(1, *model.input_size, device=self.device),
                            fold_fp32=fold_fp32),
            self.layer, use_fx=use_fx)
        self.bottleneck: Bottleneck | None = None
        #: set True to keep, in `explain_grid`, the capacity map of every step as `step_capacity`
        self.record_steps = False
        self.step_capacity: torch.Tensor | None = None
        self._recorded = []
        if estimator is not None:
            self.set_estimator(estimator)

    def set_sigma(self, sigma: float) -> None:
        """Change the smoothing of lam (feature pixels); keeps the fitted feature statistics."""
        self.sigma = check_number(sigma, "sigma")
        if self.bottleneck is not None:
            bn = self.bottleneck
            self.bottleneck = Bottleneck(bn.mean, bn.std, bn.active, self.sigma).to(self.device)

    def set_estimator(self, estimator: Estimator) -> None:
        """Use the feature statistics of `estimator` (fitted, or loaded from a cache file)."""
        self.bottleneck = Bottleneck(estimator.mean, estimator.std, estimator.active, self.sigma).to(self.device)

    def fit(self, dataloader) -> PerSampleIBA:
        """Estimate the layer's feature statistics on `dataloader` (or load them from `estimator_cache`)."""
        self.set_estimator(
            fit_estimator(self.split.head, dataloader, self.estimator_samples, self.estimator_cache, self.device,
                          check=self.model.check_inputs)
        )
        return self

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.explain(inputs, target).heatmap

    def explain(self, inputs: torch.Tensor, target: torch.Tensor | int) -> IBAResult:
        """Fit the bottleneck to each image and return heatmaps, capacities and probabilities.

        Inputs and target are checked as in `attribute`; 0 images give an empty result.
        """
        if self.bottleneck is None:
            raise NotEstimatedError(
                "PerSampleIBA needs the layer's feature statistics: call .fit(dataloader) or pass estimator="
            )
        target = check_inputs_and_target(self.model, inputs, target)
        if inputs.shape[0] == 0:
            return IBAResult.empty(tuple(inputs.shape[-2:]), tuple(self.bottleneck.mean.shape), inputs.device)
        generators = noise_generators(self.seed, inputs.shape[0], inputs.device)
        beta = torch.full((inputs.shape[0],), float(self.beta), device=inputs.device)
        size = self.chunk_size(inputs, target)
        parts = [
            self._fit_chunk(inputs[i : i + size], target[i : i + size],
                            generators[i : i + size] if generators else None, beta[i : i + size])
            for i in range(0, inputs.shape[0], size)
        ]
        return IBAResult(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def explain_grid(self, inputs: torch.Tensor, target: torch.Tensor | int, betas: list[float]) -> IBAResult:
        """Fit every image at every beta of `betas` (units of 1/k) in batched passes.

        Returns an `IBAResult` whose tensors have a beta axis after the image axis: heatmap (N, B, H, W),
        capacity (N, B, C, h, w), prob_with (N, B), prob_without (N, B). Element (i, b) draws the noise of
        image i (seed ``seed + i``), so it equals ``explain`` of image i with ``beta=betas[b]``.
        Images per chunk: ``max(1, batch_size // len(betas))``.
        """
        if not betas:
            raise ConfigError("explain_grid: betas is empty; give at least one beta (units of 1/k), e.g. [1, 10]")
        betas = [check_beta(b) for b in betas]
        if self.bottleneck is None:
            raise NotEstimatedError(
                "PerSampleIBA needs the layer's feature statistics: call .fit(dataloader) or pass estimator="
            )
        target = check_inputs_and_target(self.model, inputs, target)
        n, nb = inputs.shape[0], len(betas)
        if n == 0:
            empty = IBAResult.empty(tuple(inputs.shape[-2:]), tuple(self.bottleneck.mean.shape), inputs.device)
            return IBAResult(*(t.unsqueeze(1).expand(0, nb, *t.shape[1:]) for t in
                               (empty.heatmap, empty.capacity, empty.prob_with, empty.prob_without)))
        step = max(1, self.chunk_size(inputs, target, n * nb) // nb)
        self._recorded: list[torch.Tensor] = []
        beta_row = torch.tensor(betas, dtype=torch.float32, device=inputs.device)
        parts = []
        for i in range(0, n, step):
            m = min(step, n - i)
            gens = None
            if self.seed is not None:  # element (i, b): a fresh generator seeded seed + i for every beta
                gens = [g for j in range(m) for _ in betas
                        for g in noise_generators(self.seed + i + j, 1, inputs.device) or []]
            parts.append(self._fit_chunk(inputs[i : i + m], target[i : i + m], gens, beta_row.repeat(m), repeats=nb))
        if self.record_steps:  # (N, B, steps, C, h, w) nats: the capacity after each step's update
            self.step_capacity = torch.cat(self._recorded).unflatten(0, (n, nb))
        return IBAResult(*(torch.cat(p).unflatten(0, (n, nb)) for p in zip(*parts, strict=True)))

    def chunk_size(self, inputs: torch.Tensor, target: torch.Tensor, problems: int | None = None) -> int:
        """Problems (image, beta) fitted at once: `batch_size`, or with ``"auto"`` the fastest candidate up to
        `problems` (default: the images), measured once per (model, layer, input size, copies, steps,
        device, precision, threads) on copies of the first image and cached (`infoflow.utils.autotune`).

        A fit of c problems costs ``fixed(c) + steps * per_step(c)`` (the head pass, then the steps), so each
        candidate is timed at 1 and at 3 steps (best of 2 after a 1-step warm-up) and the two parts are
        solved for: the choice is the fastest for the configured steps, at the cost of 9 steps per candidate.
        Exact either way: the maps do not depend on the chunk size."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        problems = inputs.shape[0] if problems is None else problems
        key = {"kind": "per_sample", "model": self.model.name, "network": type(self.model.module).__name__,
               "layer": self.layer, "input": list(inputs.shape[1:]), "copies": self.copies, "steps": self.steps,
               "prepared": self.fast is not self.split}
        beta = torch.full((max(CANDIDATES),), float(self.beta), device=inputs.device)

        def fit(c: int, steps: int, warmup: bool) -> float:
            x = inputs[:1].expand(c, *inputs.shape[1:]).contiguous()
            self.steps = steps
            return timed(lambda _: self._fit_chunk(x, target[:1].expand(c), noise_generators(0, c, x.device),
                                                   beta[:c]), inputs.device, repeats=2, warmup=warmup)(c)

        def cost(c: int) -> float:
            one, three = fit(c, 1, warmup=True), fit(c, 3, warmup=False)
            per_step = max(three - one, 0.0) / 2
            return max(one - per_step, 0.0) + steps * per_step

        steps, record = self.steps, self.record_steps
        self.record_steps = False
        candidates = [c for c in CANDIDATES if c <= max(problems, 1)]
        key["candidates"] = candidates
        try:
            return choose_chunk(key, cost, inputs.device, self.precision, candidates)
        finally:
            self.steps, self.record_steps = steps, record

    def _fit_chunk(
        self, x: torch.Tensor, target: torch.Tensor, generators: list[torch.Generator] | None,
        beta: torch.Tensor, repeats: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fit ``x.shape[0] * repeats`` problems: each image `repeats` times in a row (head run once per
        image), element e with weight ``beta[e]`` and noise from ``generators[e]``."""
        assert self.bottleneck is not None
        with frozen(self.model.module):
            k = self.copies
            with torch.no_grad(), autocast(self.precision, x.device):
                feature = to_fp32(self.fast.head(x))
                prob_without = F.softmax(to_fp32(self.fast.tail(feature, x)), 1).gather(1, target[:, None])[:, 0]
            if repeats > 1:
                x, target = x.repeat_interleave(repeats, 0), target.repeat_interleave(repeats)
                feature, prob_without = feature.repeat_interleave(repeats, 0), prob_without.repeat_interleave(repeats)
            n = x.shape[0]
            x_rep = x.repeat_interleave(k, 0) if self.fast.needs_input else None
            r_rep = feature.repeat_interleave(k, 0)
            t_rep = target.repeat_interleave(k)
            alpha = torch.full_like(feature, self.init_alpha, requires_grad=True)
            optimizer = torch.optim.Adam([alpha], lr=self.lr)
            steps: list[torch.Tensor] = []
            prepared = self.fast is not self.split
            memory_format = torch.channels_last if prepared and feature.dim() == 4 else torch.preserve_format
            for _ in range(self.steps):
                optimizer.zero_grad()
                lam = self.bottleneck.lam(alpha)
                cap = self.bottleneck.capacity(feature, lam)
                noise = draw_noise((n, k, *feature.shape[1:]), generators, x.device).flatten(0, 1)
                z = self.bottleneck.inject(r_rep, lam.repeat_interleave(k, 0), noise)
                with autocast(self.precision, x.device):
                    logits = to_fp32(self.fast.tail(z.contiguous(memory_format=memory_format), x_rep))
                ce = F.cross_entropy(logits, t_rep, reduction="none").view(n, k).mean(1)
                loss = (ce + beta * cap.flatten(1).mean(1)).sum()
                loss.backward()
                optimizer.step()
                if self.record_steps:
                    steps.append(cap.detach())
        if self.record_steps:
            self._recorded.append(torch.stack(steps, 1))
        cap = cap.detach()
        prob_with = F.softmax(logits.detach(), 1).gather(1, t_rep[:, None]).view(n, k).mean(1)
        return capacity_to_heatmap(cap, tuple(x.shape[-2:])), cap, prob_with, prob_without
