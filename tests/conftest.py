"""Shared fixtures. Every test runs with its own cache dir and offline W&B."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from infoflow.models.shapesnet import ShapesNet

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caches (default weights, estimators) go to a per-session temp dir, never to ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "infoflow-cache"
    monkeypatch.setenv("INFOFLOW_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))
    return cache


def run_script(script: str, *overrides: str, cwd: Path = ROOT, timeout: int = 600) -> str:
    """Run `python <script> overrides...` in a subprocess; return its stdout; fail with its output."""
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="session")
def random_shapesnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixed untrained 4-class ShapesNet weights (seed 0) as a file: a stand-in classifier for tests of
    mechanics, the same all session (so decoder and delta_f² caches keyed on the weights match)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "shapesnet.pt"
    torch.save(ShapesNet(4).state_dict(), path)
    return path
