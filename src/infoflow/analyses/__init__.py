"""`evaluate.py` analyses by name: each is ``run(cfg) -> dict of summary values``.

Each analysis module registers its ``run`` with ``@ANALYSES.register(name)``; importing this package imports
them all, so `ANALYSES` is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from infoflow.registry import Registry
from infoflow.utils.cache import using_cache_dir

ANALYSES: Registry[Callable[[DictConfig], dict[str, Any]]] = Registry("analysis")


def run_analysis(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis ``cfg.analysis.name`` after checking the settings (before any work)."""
    from infoflow.analyses.common import check_settings
    from infoflow.utils.determinism import make_deterministic

    analysis = ANALYSES.get(cfg.analysis.name)
    check_settings(cfg)
    make_deterministic(cfg.seed)  # seeded, deterministic kernels: a rerun on this machine gives the same numbers
    with using_cache_dir(cfg.paths.cache_dir):  # one setting moves every cache, the default weights too
        return analysis(cfg)


from infoflow.analyses import coherency, grid, heatmaps, layerwise, table1  # noqa: E402,F401
