"""Safe checkpoint loading and atomic file writing."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from infoflow.errors import DataError

#: key of the header that infoflow's cache writers put into every cache file they save (a dict), so that a
#: cache file is recognised as infoflow's own: ``{"format": 1, "file": <the file's name>}``
CACHE_HEADER = "__infoflow_cache__"


class CheckpointError(DataError, ValueError):
    """A checkpoint file that is missing, empty, corrupt, refused (it holds code) or not what it should be."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint file that does not exist."""


def load_file(path: str | Path, *, keep_header: bool = False) -> Any:
    """`torch.load` with ``weights_only=True``; a missing, empty, corrupt or code-holding file is a
    `CheckpointError` naming the file. A loaded dict loses infoflow's cache header (`CACHE_HEADER`) unless
    `keep_header`, so every loader reads cache files and plain files alike."""
    obj = _load(Path(path))
    if not keep_header and isinstance(obj, dict) and CACHE_HEADER in obj:
        obj = {k: v for k, v in obj.items() if k != CACHE_HEADER}
    return obj


def _load(path: Path) -> Any:
    if not path.is_file():
        raise MissingCheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; an interrupted download or save?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects, not only tensors, and unpickling them could "
                "run code. Save a plain state dict instead: torch.save(model.state_dict(), path)"
            ) from err
        reason = "" if isinstance(err, pickle.UnpicklingError) else f" ({str(err).split('. ')[0].strip()})"
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt, truncated or not a torch file{reason}") from err


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a plain ``state_dict`` file or from a Lightning checkpoint's ``state_dict``."""
    obj = load_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a dict of tensors)")
    return obj


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside `path`, then rename it onto `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
