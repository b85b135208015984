"""`evaluate.py` analyses by name: each is ``run(cfg) -> dict of summary values``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from infoflow.registry import Registry
from infoflow.utils.cache import using_cache_dir

ANALYSES: Registry[Callable[[DictConfig], dict[str, Any]]] = Registry("analysis")

#: modules whose import registers the analyses
_ANALYSIS_MODULES = ("infoflow.analyses.heatmaps", "infoflow.analyses.layerwise", "infoflow.analyses.coherency",
                     "infoflow.analyses.table1")


def run_analysis(cfg: DictConfig) -> dict[str, Any]:
    for module in _ANALYSIS_MODULES:
        importlib.import_module(module)
    with using_cache_dir(cfg.paths.cache_dir):  # one setting moves every cache, the default weights too
        return ANALYSES.get(cfg.analysis.name)(cfg)
