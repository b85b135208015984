"""Evaluation metrics as torchmetrics Metrics (sum-reduced states, so they reduce over processes): the IBA
paper's degradation (MoRF/LeRF), Sensitivity-n, bounding-box ratio and cascading-randomisation sanity check,
and the common ones: insertion/deletion, pointing games, mask ratio, ROAD, sparseness, random-logit test,
max-sensitivity and infidelity."""

from infoflow.metrics.bbox import BoundingBoxRatio
from infoflow.metrics.degradation import Degradation, DegradationResult
from infoflow.metrics.insertion_deletion import InsertionDeletion, InsertionDeletionResult
from infoflow.metrics.mask_ratio import MaskRatio
from infoflow.metrics.perturb import Classifier
from infoflow.metrics.pointing import EnergyPointingGame, PointingGame
from infoflow.metrics.random_logit import RandomLogit, random_logit_check
from infoflow.metrics.road import ROAD, ROADResult, linear_imputation
from infoflow.metrics.robustness import Infidelity, MaxSensitivity
from infoflow.metrics.sanity import (
    SanitySSIM,
    cascading_randomization,
    cascading_sanity_check,
    heatmap_ssim,
    normalize_heatmap,
    resettable_layers,
    ssim,
)
from infoflow.metrics.sensitivity import SensitivityN, SensitivityNResult, pearson
from infoflow.metrics.sparseness import Sparseness, gini
from infoflow.metrics.tiles import TileGrid

__all__ = [
    "BoundingBoxRatio",
    "Classifier",
    "Degradation",
    "DegradationResult",
    "EnergyPointingGame",
    "Infidelity",
    "InsertionDeletion",
    "InsertionDeletionResult",
    "MaskRatio",
    "MaxSensitivity",
    "PointingGame",
    "ROAD",
    "ROADResult",
    "RandomLogit",
    "SanitySSIM",
    "SensitivityN",
    "SensitivityNResult",
    "Sparseness",
    "TileGrid",
    "cascading_randomization",
    "resettable_layers",
    "cascading_sanity_check",
    "gini",
    "heatmap_ssim",
    "linear_imputation",
    "normalize_heatmap",
    "pearson",
    "random_logit_check",
    "ssim",
]
