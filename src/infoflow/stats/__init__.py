"""Intervals for means and differences over images and seeds (seeded bootstrap, t intervals)."""

from infoflow.stats.intervals import (
    METHODS,
    BootstrapSettings,
    ClusterDifference,
    Interval,
    cluster_difference,
    mean_interval,
    paired_difference,
)

__all__ = [
    "METHODS",
    "BootstrapSettings",
    "ClusterDifference",
    "Interval",
    "cluster_difference",
    "mean_interval",
    "paired_difference",
]
