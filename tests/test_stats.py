"""infoflow.stats: coverage, agreement with scipy, determinism, paired and cluster intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from infoflow.errors import ConfigError, InputError
from infoflow.stats import BootstrapSettings, Interval, cluster_difference, mean_interval, paired_difference


@pytest.mark.parametrize("method,trials,n_resamples", [("t", 2000, 1), ("percentile", 400, 999)])
def test_coverage_of_95_interval_on_normal_data(method, trials, n_resamples):
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(trials):
        x = rng.normal(1.5, 2.0, size=30)
        iv = mean_interval(x, level=0.95, seed=i, method=method, n_resamples=n_resamples)
        hits += iv.low <= 1.5 <= iv.high
    cover = hits / trials
    tol = 3 * np.sqrt(0.95 * 0.05 / trials) + (
        0.015 if method == "percentile" else 0.0
    )  # percentile: small-n bias
    assert abs(cover - 0.95) <= tol, cover


@pytest.mark.parametrize("method", ["percentile", "basic", "bca"])
def test_agrees_with_scipy_bootstrap(method):
    x = np.random.default_rng(3).exponential(size=25)
    iv = mean_interval(x, level=0.9, seed=7, method=method, n_resamples=2000)
    ref = sps.bootstrap(
        (x,), np.mean, confidence_level=0.9, n_resamples=2000, method=method, rng=np.random.default_rng(7)
    ).confidence_interval
    assert iv.low == pytest.approx(ref.low) and iv.high == pytest.approx(ref.high)
    assert iv.estimate == pytest.approx(x.mean()) and iv.n == 25 and iv.level == 0.9


def test_t_interval_is_scipy_t_interval():
    x = np.random.default_rng(4).normal(size=12)
    iv = mean_interval(x, level=0.99, method="t")
    lo, hi = sps.t.interval(0.99, 11, loc=x.mean(), scale=sps.sem(x))
    assert (iv.low, iv.high) == pytest.approx((lo, hi))
    assert iv.low < iv.estimate < iv.high


def test_deterministic_for_a_seed_and_varies_with_seed():
    x = np.random.default_rng(5).normal(size=20)
    assert mean_interval(x, seed=3) == mean_interval(x, seed=3)
    assert mean_interval(x, seed=3).low != mean_interval(x, seed=4).low
    a, b = [x[:10], x[10:]], [x[:10] + 1, x[10:] + 2]
    assert cluster_difference(a, b, seed=1, n_resamples=500) == cluster_difference(
        a, b, seed=1, n_resamples=500
    )


def test_paired_is_narrower_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(6)
    shared = rng.normal(0, 5.0, size=40)  # per-image difficulty, shared by both arms
    a = shared + rng.normal(0, 0.3, size=40)
    b = shared + 0.5 + rng.normal(0, 0.3, size=40)
    paired = paired_difference(a, b, seed=0)
    ia, ib = mean_interval(a, seed=0), mean_interval(b, seed=1)
    unpaired_half = np.hypot(ia.width, ib.width)  # width of an independent difference
    assert paired.width < 0.2 * unpaired_half
    assert paired.excludes_zero and paired.low > 0
    # the paired difference is exactly the bootstrap of the per-image differences
    assert paired == mean_interval(b - a, seed=0)


def test_cluster_interval_wider_than_image_only_when_seeds_dominate():
    rng = np.random.default_rng(8)
    a = [rng.normal(size=16) * 0.1 + rng.normal(0, 1.0) for _ in range(4)]
    b = [rng.normal(size=16) * 0.1 + rng.normal(0, 1.0) for _ in range(4)]
    cd = cluster_difference(a, b, seed=0, n_resamples=4000)
    img_only = paired_difference(np.concatenate(a), np.concatenate(b), seed=0)
    assert cd.interval.width > 2 * img_only.width  # pooling images ignores that seeds cluster
    assert cd.dominant == "seeds"
    assert min(cd.seed_sd) > 2 * max(cd.image_se)
    assert cd.n_seeds == (4, 4) and cd.n_images == (64, 64)
    assert cd.interval.estimate == pytest.approx(
        np.mean([v.mean() for v in b]) - np.mean([v.mean() for v in a])
    )
    assert cd.interval.low <= cd.interval.estimate <= cd.interval.high


def test_cluster_with_one_seed_reduces_to_image_bootstrap_spread():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=200), rng.normal(0.2, size=200)
    cd = cluster_difference([a], [b], seed=0, n_resamples=4000)
    se = np.hypot(sps.sem(a), sps.sem(b))
    assert cd.interval.width == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert np.isnan(cd.seed_sd[0]) and cd.dominant == "images"


def test_interval_helpers_and_degenerate_inputs():
    iv = Interval(1.0, 0.5, 1.5, 0.95, "t", 10)
    assert iv.excludes_zero and iv.width == 1.0 and iv.inside(0, 2) and not iv.inside(0.6, 2)
    assert not Interval(0.1, -0.5, 0.7, 0.95, "t", 10).excludes_zero
    assert iv.as_dict("sid") == {"sid": 1.0, "sid_low": 0.5, "sid_high": 1.5}
    one = mean_interval([2.0])
    assert one.estimate == 2.0 and np.isnan(one.low) and not one.excludes_zero
    const = mean_interval([3.0] * 5, method="bca")
    assert (const.low, const.high) == (3.0, 3.0)
    with pytest.raises(InputError, match="finite"):
        mean_interval([1.0, np.nan])
    with pytest.raises(InputError, match="one value per image"):
        paired_difference([1, 2], [1, 2, 3])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"level": 1.0}, "bootstrap.level"),
        ({"level": "0.9"}, "bootstrap.level"),
        ({"n_resamples": 0}, "bootstrap.n_resamples"),
        ({"seed": -1}, "bootstrap.seed"),
        ({"method": "jackknife"}, "bootstrap.method"),
    ],
)
def test_settings_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BootstrapSettings(**kwargs)
    assert BootstrapSettings().level == 0.95
