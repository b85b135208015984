"""Import every module that registers attribution methods, so `METHODS` is complete."""

import infoflow.analyses.evaluation  # noqa: F401  (the ground-truth oracle)
import infoflow.attribution.baselines  # noqa: F401
import infoflow.attribution.lrp  # noqa: F401
import infoflow.attribution.pattern  # noqa: F401
import infoflow.iba.per_sample  # noqa: F401
import infoflow.iba.readout  # noqa: F401
