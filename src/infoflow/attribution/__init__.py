"""Attribution methods behind one interface (`infoflow.interface.Attribution`), in one registry.

Importing this package imports every method module, so `METHODS` names every method: the baselines,
LRP, PatternAttribution, attention rollout (ViTs), the ground-truth oracle, and IBA's Per-Sample and Readout Bottlenecks.
"""

import infoflow.iba  # noqa: F401  (registers iba, readout)
from infoflow.attribution import baselines, ground_truth, lrp, pattern, rollout  # noqa: F401  (register the methods)
from infoflow.interface import METHODS, Attribution, as_target

__all__ = ["METHODS", "Attribution", "as_target"]
