"""delta_f², the normalisation of the SID constraint, per (model, weights, layer).

    delta_f² = lim_{tau -> 0} E_{x, noise} ||h(x + tau * noise) - h(x)||² / tau²,   noise ~ N(0, I)

with x in the [0, 1] pixel space and i.i.d. noise on every input unit (channel and pixel); h is the
layer's feature (see `features`). Units: squared feature units per squared [0, 1] pixel unit. For a
differentiable h it is the mean squared Frobenius norm of the Jacobian.

Estimate: for each image, `samples` noise draws; the same draws are used at tau and at tau/2 (common
random numbers), so the relative difference of the two estimates measures only the distance from the
limit, not Monte-Carlo noise. `value` is the tau/2 estimate (the closer one to the limit);
`rel_diff = |v(tau) - v(tau/2)| / v(tau/2)`. All layers come from the same forward passes.

Cache: one file per `utils.cache.cache_key` of (model name, weights, layer) and the recipe: input size,
normalisation, tau, noise draws, seed, the images (SHA-256 of their values) and the weights' fingerprint
(SHA-256 of all parameters/buffers, so random initialisations and retrained checkpoints at the same path
are distinct). Files are written atomically and read with weights_only=True; a corrupt one is re-estimated.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from infoflow.discarding.features import LayerFeatures, noise_generator
from infoflow.utils.cache import (
    cache_file,
    cache_key,
    ensure_writable,
    load_cached,
    save_cached,
    tensor_digest,
    tensor_fingerprint,
)
from infoflow.utils.checkpoint import load_file


@dataclass(frozen=True)
class DeltaF2:
    """delta_f² of one layer: `value` (at tau/2), `value_tau` (at tau), their relative difference."""

    value: float
    value_tau: float
    rel_diff: float
    tau: float
    num_images: int
    num_samples: int


def estimate_delta_f2(
    features: LayerFeatures,
    images01: torch.Tensor,
    tau: float = 1e-3,
    samples: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    tol: float = 0.05,
) -> dict[str, DeltaF2]:
    """delta_f² of every layer of `features`, averaged over `images01` (N, C, H, W) in [0, 1].

    Args:
        tau: noise scale in [0, 1] pixel units; tau/2 is evaluated with the same noise.
        samples: noise draws per image.
        batch_size: rows per forward pass (each image needs 1 + 2 * samples rows).
        tol: warn when `rel_diff` exceeds it (tau too large for the limit).
    """
    if images01.dim() != 4 or images01.shape[0] == 0:
        raise ValueError(f"images must be (N, C, H, W) with N >= 1, got {tuple(images01.shape)}")
    rows = 1 + 2 * samples
    per_batch = max(1, batch_size // rows)
    sums = {"tau": {}, "half": {}}
    with torch.no_grad():
        for start in range(0, images01.shape[0], per_batch):
            x = images01[start : start + per_batch]
            n = x.shape[0]
            gens = [noise_generator(seed, start + i, "delta_f2") for i in range(n)]
            noise = torch.stack([torch.randn((samples, *x.shape[1:]), generator=g) for g in gens]).to(x)
            batch = torch.cat(
                [x[:, None], x[:, None] + tau * noise, x[:, None] + tau / 2 * noise], dim=1
            ).flatten(0, 1)
            for name, f in features(batch).items():
                f = f.reshape(n, rows, -1)
                d = (f[:, 1:] - f[:, :1]).pow(2).sum(-1)  # (n, 2 * samples)
                for key, part, t in (("tau", d[:, :samples], tau), ("half", d[:, samples:], tau / 2)):
                    sums[key][name] = sums[key].get(name, 0.0) + part.double().sum().item() / t**2
    count = images01.shape[0] * samples
    out = {}
    for name in features.order:
        v_tau, v_half = sums["tau"][name] / count, sums["half"][name] / count
        if v_half <= 0:
            raise ValueError(f"delta_f² of layer {name!r} is 0: its feature does not depend on the input")
        rel = abs(v_tau - v_half) / v_half
        if rel > tol:
            warnings.warn(
                f"delta_f² of layer {name!r} changes by {rel:.1%} when tau halves ({tau} -> {tau / 2}); "
                "use a smaller tau",
                stacklevel=2,
            )
        out[name] = DeltaF2(v_half, v_tau, rel, tau, images01.shape[0], samples)
    return out


class DeltaF2Cache:
    """On-disk cache of `DeltaF2` records under `root`, one ``.pt`` file per key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(model_name: str, weights: str, layer_path: str, recipe: Mapping[str, object]) -> str:
        """`utils.cache.cache_key` of a layer's delta_f² with `recipe` (every setting of the estimate)."""
        return cache_key(model_name, weights, layer_path, None, {"kind": "delta_f2", **recipe})

    def path(self, model_name: str, layer_path: str, key: str) -> Path:
        return cache_file(self.root, model_name, layer_path, key)

    def get(self, path: Path) -> DeltaF2 | None:
        """The record in `path`; None when missing or corrupt (then it is deleted)."""
        return load_cached(path, lambda p: DeltaF2(**load_file(p)))

    def put(self, path: Path, value: DeltaF2) -> None:
        save_cached(asdict(value), path)


def delta_f2_for_model(
    model_name: str,
    weights: str,
    features: LayerFeatures,
    images01: torch.Tensor,
    cache_dir: str | Path | None = None,
    tau: float = 1e-3,
    samples: int = 16,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, DeltaF2]:
    """delta_f² for every layer of `features`, read from / written to `cache_dir` when given.

    Layers missing from the cache are estimated together on `images01`; the cache key is described in
    the module docstring (`model_name` and `weights` as in `get_model`).
    """
    if cache_dir is None:
        return estimate_delta_f2(features, images01, tau, samples, seed, batch_size)
    cache = DeltaF2Cache(cache_dir)
    mean = tuple(features.mean.flatten().tolist())
    std = tuple(features.std.flatten().tolist())
    recipe = {"input_size": list(images01.shape[1:]), "mean": mean, "std": std, "tau": tau, "samples": samples,
              "seed": seed, "images": tensor_digest(images01), "fingerprint": tensor_fingerprint(features.model)}
    paths = {name: cache.path(model_name, p, cache.key(model_name, weights, p, recipe))
             for name, p in features.paths.items()}
    found = {name: cache.get(path) for name, path in paths.items()}
    missing = [name for name, v in found.items() if v is None]
    if missing:
        ensure_writable(cache.root)
        sub = LayerFeatures(features.model, {n: features.paths[n] for n in missing}, mean, std)
        for name, value in estimate_delta_f2(sub, images01, tau, samples, seed, batch_size).items():
            cache.put(paths[name], value)
            found[name] = value
    return {name: found[name] for name in features.paths}  # type: ignore[misc]
