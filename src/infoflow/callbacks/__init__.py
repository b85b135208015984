"""Evaluation callbacks any ``train.py`` task can switch on: ``callbacks=[default,layerwise]``.

`LayerwiseCallback` (SID / concentration / RU per layer) and `AttributionMetricsCallback` (degradation,
Sensitivity-n, bounding-box ratio of attribution maps) measure the network being trained every few epochs on
a fixed, seeded subset; `base` holds what they share (`schedule`, `subset`, `rows`, `network`, `loggers`).
"""

from infoflow.callbacks.attribution_metrics import AttributionMetricsCallback
from infoflow.callbacks.base import EvaluationCallback
from infoflow.callbacks.layerwise import LayerwiseCallback

__all__ = ["AttributionMetricsCallback", "EvaluationCallback", "LayerwiseCallback"]
