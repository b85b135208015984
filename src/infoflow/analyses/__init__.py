"""`evaluate.py` analyses by name: each is ``run(cfg) -> dict of summary values``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from infoflow.registry import Registry

ANALYSES: Registry[Callable[[DictConfig], dict[str, Any]]] = Registry("analysis")

#: modules whose import registers the analyses
_ANALYSIS_MODULES = ("infoflow.analyses.heatmaps", "infoflow.analyses.layerwise", "infoflow.analyses.coherency",
                     "infoflow.analyses.table1")


def run_analysis(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis ``cfg.analysis.name`` after checking the settings (before any work)."""
    from infoflow.analyses.common import check_settings

    for module in _ANALYSIS_MODULES:
        importlib.import_module(module)
    analysis = ANALYSES.get(cfg.analysis.name)
    check_settings(cfg)
    return analysis(cfg)
