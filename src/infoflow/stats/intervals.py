"""Confidence intervals for a mean over images, a paired difference, and a difference of arms over seeds.

- `mean_interval`: the mean of per-image values with a seeded bootstrap interval over images
  (`scipy.stats.bootstrap`, percentile / basic / BCa), or a Student t interval;
- `paired_difference`: mean(b - a) over the same images, bootstrapped on the per-image differences, so that
  what the images share cancels;
- `cluster_difference`: mean(b) - mean(a) for two arms trained with several seeds each; a two-stage bootstrap
  (resample seeds, then images within each drawn seed) so the interval includes the seed-to-seed variation,
  with the seed spread and the image spread reported separately.

Every interval is reproducible: the same values and seed give the same bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _stats

from infoflow.errors import ConfigError, InputError
from infoflow.utils.validation import check_choice, check_count

#: interval methods: bootstrap percentile, basic, bias-corrected and accelerated, and Student t
METHODS = ("percentile", "basic", "bca", "t")


def _check_level(level: object, name: str = "level") -> float:
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < float(level) < 1.0:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {seed!r}")
    return int(seed)


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed: confidence `level` in (0, 1), bootstrap `n_resamples`, the bootstrap's
    random `seed`, and the `method` (one of `METHODS`)."""

    level: float = 0.95
    n_resamples: int = 9999
    seed: int = 0
    method: str = "percentile"

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _check_level(self.level, "bootstrap.level"))
        object.__setattr__(self, "n_resamples", check_count(self.n_resamples, "bootstrap.n_resamples"))
        object.__setattr__(self, "seed", _check_seed(self.seed, "bootstrap.seed"))
        object.__setattr__(self, "method", check_choice(self.method, "bootstrap.method", METHODS))


@dataclass(frozen=True)
class Interval:
    """A point `estimate` with its `level` confidence interval [`low`, `high`], computed by `method` from `n`
    values (images, or seeds for a cluster interval). With n < 2 the bounds are NaN (no spread to measure)."""

    estimate: float
    low: float
    high: float
    level: float
    method: str
    n: int

    @property
    def width(self) -> float:
        """high - low (NaN when the interval could not be computed)."""
        return self.high - self.low

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (False when it is NaN)."""
        return bool(self.low > 0 or self.high < 0)

    def inside(self, lo: float, hi: float) -> bool:
        """True when the whole interval lies within [lo, hi] (e.g. an equivalence margin)."""
        return bool(lo <= self.low and self.high <= hi)

    def outside(self, lo: float, hi: float) -> bool:
        """True when the whole interval lies outside [lo, hi]."""
        return bool(self.high < lo or self.low > hi)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """{prefix: estimate, prefix_low: low, prefix_high: high} for table rows (prefix '' gives mean/low/high)."""
        key = prefix or "mean"
        sep = "_" if prefix else ""
        return {key: self.estimate, f"{prefix}{sep}low": self.low, f"{prefix}{sep}high": self.high}


def _as_values(values: object, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise InputError(f"{what}: an interval needs at least one value, got none")
    if not np.all(np.isfinite(arr)):
        raise InputError(
            f"{what}: every value must be finite, got {int((~np.isfinite(arr)).sum())} non-finite"
        )
    return arr


def mean_interval(
    values: object,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    n_resamples: int = 9999,
) -> Interval:
    """The mean of `values` (n,) with its `level` interval: a seeded bootstrap over the values
    (`scipy.stats.bootstrap`, vectorised) or, with method="t", the Student t interval mean +- t * sd / sqrt(n)."""
    level = _check_level(level)
    method = check_choice(method, "method", METHODS)
    seed = _check_seed(seed)
    n_resamples = check_count(n_resamples, "n_resamples")
    arr = _as_values(values)
    n = arr.size
    mean = float(arr.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, level, method, n)
    if np.ptp(arr) == 0.0:  # no spread: every resample gives the same mean
        return Interval(mean, mean, mean, level, method, n)
    if method == "t":
        low, high = _stats.t.interval(level, n - 1, loc=mean, scale=_stats.sem(arr))
    else:
        res = _stats.bootstrap(
            (arr,),
            np.mean,
            confidence_level=level,
            n_resamples=n_resamples,
            method=method,
            vectorized=True,
            axis=-1,
            rng=np.random.default_rng(seed),
        )
        low, high = res.confidence_interval
    return Interval(mean, float(low), float(high), level, method, n)


def paired_difference(
    a: object,
    b: object,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    n_resamples: int = 9999,
) -> Interval:
    """mean(b - a) over the same images, with the interval of `mean_interval` on the per-image differences."""
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    if a_arr.shape != b_arr.shape:
        raise InputError(
            f"a paired difference needs one value per image in both arms, got {a_arr.size} and {b_arr.size}"
        )
    return mean_interval(b_arr - a_arr, level=level, seed=seed, method=method, n_resamples=n_resamples)


@dataclass(frozen=True)
class ClusterDifference:
    """mean(b) - mean(a) over seeds and images (`interval`, method "cluster"), with the spreads of each arm:
    `seed_sd` the standard deviation of the seed means (ddof=1; NaN with one seed) and `image_se` the mean
    over seeds of the within-seed standard error of the mean, both as (arm a, arm b)."""

    interval: Interval
    seed_sd: tuple[float, float]
    image_se: tuple[float, float]
    n_seeds: tuple[int, int]
    n_images: tuple[int, int]

    @property
    def dominant(self) -> str:
        """'seeds' when the seed spread exceeds the image spread in either arm, else 'images'."""
        seed = np.nanmax(self.seed_sd) if not all(math.isnan(s) for s in self.seed_sd) else 0.0
        return "seeds" if seed > max(self.image_se) else "images"


def _arm(by_seed: Sequence[object], what: str) -> list[np.ndarray]:
    if len(by_seed) == 0:
        raise InputError(f"{what}: a cluster interval needs at least one seed, got none")
    return [_as_values(v, f"{what}[{i}]") for i, v in enumerate(by_seed)]


def _two_stage_means(arm: list[np.ndarray], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples,) bootstrap means of the seed means: draw seeds with replacement, then images with
    replacement within each drawn seed."""
    s = len(arm)
    drawn = rng.integers(0, s, size=(n_resamples, s))
    slot_means = np.empty((n_resamples, s))
    for k, values in enumerate(arm):
        chosen = drawn == k
        count = int(chosen.sum())
        if count:
            idx = rng.integers(0, values.size, size=(count, values.size))
            slot_means[chosen] = values[idx].mean(axis=1)
    return slot_means.mean(axis=1)


def _spreads(arm: list[np.ndarray]) -> tuple[float, float]:
    means = np.array([v.mean() for v in arm])
    seed_sd = float(means.std(ddof=1)) if means.size > 1 else math.nan
    ses = [float(_stats.sem(v)) if v.size > 1 else math.nan for v in arm]
    return seed_sd, float(np.nanmean(ses)) if not all(math.isnan(x) for x in ses) else math.nan


def cluster_difference(
    a_by_seed: Sequence[object],
    b_by_seed: Sequence[object],
    level: float = 0.95,
    seed: int = 0,
    n_resamples: int = 9999,
) -> ClusterDifference:
    """mean(b) - mean(a), each arm's mean the mean of its seed means, with a `level` percentile interval from
    a two-stage bootstrap (seeds, then images within each seed), drawn independently for the two arms.

    `a_by_seed[i]` holds the per-image values (n_i,) of arm a trained with its i-th seed."""
    level = _check_level(level)
    seed = _check_seed(seed)
    n_resamples = check_count(n_resamples, "n_resamples")
    a, b = _arm(a_by_seed, "a_by_seed"), _arm(b_by_seed, "b_by_seed")
    estimate = float(np.mean([v.mean() for v in b]) - np.mean([v.mean() for v in a]))
    rng = np.random.default_rng(seed)
    diffs = _two_stage_means(b, n_resamples, rng) - _two_stage_means(a, n_resamples, rng)
    alpha = (1.0 - level) / 2.0
    if np.ptp(diffs) == 0.0:
        low = high = estimate
    else:
        low, high = (float(q) for q in np.quantile(diffs, [alpha, 1.0 - alpha]))
    (sa, ia), (sb, ib) = _spreads(a), _spreads(b)
    return ClusterDifference(
        interval=Interval(estimate, low, high, level, "cluster", len(a) + len(b)),
        seed_sd=(sa, sb),
        image_se=(ia, ib),
        n_seeds=(len(a), len(b)),
        n_images=(sum(v.size for v in a), sum(v.size for v in b)),
    )
