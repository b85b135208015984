"""Streaming per-element statistics of a layer's feature map, as a torchmetrics `Metric`.

Sums are kept in float64 (count, sum, sum of squares, non-zero count), so updates stream over any number
of batches and, under DDP, the states are summed across processes: every rank ends with the same mean,
std and active mask as one process that saw all the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torchmetrics import Metric

from infoflow.errors import DataError, InputError, NotFittedError
from infoflow.utils.cache import ensure_writable, load_cached, save_cached
from infoflow.utils.checkpoint import CheckpointError, atomic_save, load_file
from infoflow.utils.validation import check_finite


class NotEstimatedError(NotFittedError):
    """Attribution was asked for before the feature statistics were estimated."""


class Estimator(Metric):
    """Per-element mean and std of features of shape `shape` = (C, H, W) (or any shape).

    Args:
        shape: shape of one feature map, without the batch dimension.
        min_std: the std is clamped to at least this value (the reference uses 0.01).
        active_threshold: an element is *active* when it is non-zero in more than this fraction of samples.
    """

    full_state_update = False

    def __init__(self, shape: tuple[int, ...], min_std: float = 0.01, active_threshold: float = 0.01) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.min_std = min_std
        self.active_threshold = active_threshold
        zeros = torch.zeros(self.shape, dtype=torch.float64)
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("s1", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("s2", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("nonzero", zeros.clone(), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features (N, *shape)."""
        if tuple(features.shape[1:]) != self.shape:
            raise InputError(f"estimator expects features of shape (N, {self.shape}), got {tuple(features.shape)}")
        f = features.detach().to(torch.float64)
        bad = ~torch.isfinite(f).flatten(1).all(1)
        if bad.any():
            raise InputError(
                f"features of {int(bad.sum())} of {f.shape[0]} samples contain NaN or inf: the estimator takes "
                "finite features only (check the images and the model's weights)"
            )
        self.n += f.shape[0]
        self.s1 += f.sum(0)
        self.s2 += (f * f).sum(0)
        self.nonzero += (f != 0).sum(0)

    def _check(self) -> None:
        if self.n < 2:
            raise NotEstimatedError("the estimator has seen fewer than 2 samples: fit it on data first")
        self._check_finite()

    def _check_finite(self) -> None:
        if not all(bool(torch.isfinite(getattr(self, k)).all()) for k in ("n", "s1", "s2", "nonzero")):
            raise NotEstimatedError("the estimator's sums are not finite (NaN or inf): fit it anew on finite data")

    @property
    def mean(self) -> torch.Tensor:
        self._check()
        return (self.s1 / self.n).float()

    @property
    def std(self) -> torch.Tensor:
        """Sample std (Bessel-corrected), clamped to at least `min_std`."""
        self._check()
        var = (self.s2 - self.s1 * self.s1 / self.n) / (self.n - 1)
        return var.clamp_min(0).sqrt().clamp_min(self.min_std).float()

    @property
    def active(self) -> torch.Tensor:
        """Bool mask of the elements that are non-zero in more than `active_threshold` of the samples."""
        self._check()
        return self.nonzero / self.n > self.active_threshold

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.mean, self.std, self.active

    def _state(self) -> dict[str, torch.Tensor]:
        """The sums on the CPU; non-finite sums are an error (never written)."""
        self._check_finite()
        state = {"shape": torch.tensor(self.shape), "n": self.n, "s1": self.s1, "s2": self.s2, "nonzero": self.nonzero}
        return {k: v.detach().cpu() for k, v in state.items()}

    def save(self, path: str | Path) -> Path:
        """Write the sums to `path` atomically (a plain file); non-finite sums are never written."""
        return atomic_save(self._state(), path)

    def save_cache(self, path: str | Path) -> Path:
        """`save` as an infoflow cache file (with the header of `utils.cache.save_cached`)."""
        return save_cached(self._state(), path)

    def load(self, path: str | Path) -> Estimator:
        """Load sums saved by `save`; the feature shape must match.

        Raises a `CheckpointError` for a file that is not an estimator of this shape (missing sums, wrong shapes,
        non-finite sums).
        """
        state = load_file(path)
        keys = ("shape", "n", "s1", "s2", "nonzero")
        if not isinstance(state, dict) or not all(isinstance(state.get(k), torch.Tensor) for k in keys):
            raise CheckpointError(f"{path} is not an estimator file (needs tensors {', '.join(keys)})")
        shape = tuple(state["shape"].tolist())
        if shape != self.shape:
            raise CheckpointError(f"estimator file {path} is for features of shape {shape}, not {self.shape}")
        if state["n"].numel() != 1 or any(tuple(state[k].shape) != self.shape for k in ("s1", "s2", "nonzero")):
            raise CheckpointError(f"estimator file {path} holds sums of the wrong shapes for features {self.shape}")
        if not all(bool(torch.isfinite(state[k]).all()) for k in ("n", "s1", "s2", "nonzero")):
            raise CheckpointError(f"estimator file {path} holds NaN or infinite sums")
        for key in ("n", "s1", "s2", "nonzero"):
            setattr(self, key, state[key].to(device=self.device, dtype=torch.float64).reshape(getattr(self, key).shape))
        return self


@torch.no_grad()
def fit_estimator(
    features: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[dict[str, torch.Tensor]],
    max_samples: int = 5000,
    cache: str | Path | None = None,
    device: torch.device | str = "cpu",
    check: Callable[[torch.Tensor], None] | None = None,
) -> Estimator:
    """Estimate the statistics of ``features(images)`` over at most `max_samples` images of `batches`.

    With `cache`, a saved estimator is loaded from that file when it exists, else the fitted one is saved
    there, so each (model, weights, layer, data, `max_samples`) is estimated once (see `utils.cache`). A
    corrupt file is deleted and re-estimated; an unwritable cache directory is an error before the work.
    `check(images)` (e.g. `ZooModel.check_inputs`) is run on every batch of images first; its `InputError` is
    re-raised naming the batch. Images must be finite (an `InputError` otherwise), so NaN statistics never
    reach the cache.
    """
    estimator: Estimator | None = None
    for index, batch in enumerate(batches):
        images = batch["image"]
        try:
            check(images) if check is not None else check_finite(images)
        except InputError as err:
            raise InputError(f"estimator data, batch {index}: {err}") from None
        f = features(images.to(device))
        if estimator is None:
            estimator = Estimator(tuple(f.shape[1:])).to(device)
            if cache is not None:
                loaded = load_cached(cache, estimator.load)
                if loaded is not None:
                    return loaded
                ensure_writable(Path(cache).parent)
        estimator.update(f[: max_samples - int(estimator.n)])
        if estimator.n >= max_samples:
            break
    if estimator is None:
        raise DataError("no data to estimate the feature statistics from: the dataloader yielded no batch")
    if cache is not None:
        estimator.save_cache(cache)
    return estimator
