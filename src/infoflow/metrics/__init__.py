"""The IBA paper's evaluation metrics as torchmetrics Metrics (sum-reduced states, so they reduce over
processes): degradation (MoRF/LeRF), Sensitivity-n, bounding-box ratio and the cascading-randomisation
sanity check."""

from infoflow.metrics.bbox import BoundingBoxRatio
from infoflow.metrics.degradation import Degradation, DegradationResult
from infoflow.metrics.perturb import Classifier
from infoflow.metrics.sanity import (
    SanitySSIM,
    cascading_randomization,
    cascading_sanity_check,
    heatmap_ssim,
    normalize_heatmap,
    ssim,
)
from infoflow.metrics.sensitivity import SensitivityN, SensitivityNResult, pearson
from infoflow.metrics.tiles import TileGrid

__all__ = [
    "BoundingBoxRatio",
    "Classifier",
    "Degradation",
    "DegradationResult",
    "SanitySSIM",
    "SensitivityN",
    "SensitivityNResult",
    "TileGrid",
    "cascading_randomization",
    "cascading_sanity_check",
    "heatmap_ssim",
    "normalize_heatmap",
    "pearson",
    "ssim",
]
