"""Shared fixtures. The whole session runs with its own cache dir and offline W&B."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import infoflow.tasks  # noqa: F401  (registers the trainers of the default weights, as the entry points do)
from infoflow.cli.plugins import name_plugins
from infoflow.models.pretrained import DEFAULTS, default_weights_path
from infoflow.models.shapesnet import ShapesNet
from infoflow.utils.cache import cache_dir

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every cache (default weights, estimators, delta_f², decoders) goes to a per-session temp dir, never to
    the user's cache. Session-scoped and autouse, so it is set before any module- or session-scoped fixture.

    The default weights of shapesnet, shapesvit and resnet18 (minutes to train) are copied from the user's cache when they are there
    for the current version (read only; an empty cache, as in CI, trains them once per session).
    """
    user = cache_dir()
    cache = tmp_path_factory.getbasetemp() / "infoflow-cache"
    cache.mkdir(parents=True, exist_ok=True)
    for model in DEFAULTS:
        for trained in user.glob(default_weights_path("*", user, model).name):
            if not (cache / trained.name).exists():
                shutil.copyfile(trained, cache / trained.name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFOFLOW_CACHE", str(cache))
        patch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))
        yield cache


@pytest.fixture
def _isolated_cache(_session_cache: Path) -> Path:
    """The session's cache dir (see `_session_cache`)."""
    return _session_cache


def compose_config(primary: str, overrides: list[str] | tuple[str, ...] = (), *, hydra: bool = False) -> DictConfig:
    """``conf/<primary>.yaml`` composed with `overrides` as the entry points see it: every plug-in named by
    its config group choice (`infoflow.cli.plugins.name_plugins`). The ``hydra`` node is kept only when
    `hydra` is true (as Hydra itself removes it from the job config)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(primary, overrides=list(overrides), return_hydra_config=True)
    name_plugins(cfg, cfg.hydra.runtime.choices)
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


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


def explain_one_at_a_time(iba, images: torch.Tensor, target: torch.Tensor, seed: int) -> torch.Tensor:
    """Heatmaps (N, H, W) of a Per-Sample IBA fitted to one image per call, image i with noise seed
    ``seed + i`` (what image i of a batch draws), for comparison with one batched call."""
    maps = []
    for i in range(images.shape[0]):
        iba.seed = seed + i
        maps.append(iba.explain(images[i : i + 1], target[i : i + 1]).heatmap)
    return torch.cat(maps)
