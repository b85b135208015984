"""Cache identity and cache files: one key for everything infoflow computes once and keeps on disk.

Estimators, delta_f² and decoders are computed once per *identity*: model, weights, layer, data and
recipe (every setting that changes the result, e.g. an estimator's sample count). `cache_key` turns
that identity into a stable SHA-256 key; `cache_file` names the file. All cache writers and readers
use these, so two results that differ in any input never share a file.

- Data: the data config without `LOADER_KEYS`, the only settings that never change any example.
- Weights: `weights_id`: a named version for built-in weights (``default``: see `WEIGHTS_VERSIONS`),
  a checkpoint file by its path, size and modification time, otherwise the name. Where the network is
  at hand, `tensor_fingerprint` (SHA-256 of every parameter and buffer) pins the exact weights.
- Root: `cache_dir()` is the one setting for every cache: ``paths.cache_dir`` in the configs, which the
  entry points apply with `using_cache_dir`; its default is ``$INFOFLOW_CACHE``, else
  ``~/.cache/infoflow`` (also for Python use without Hydra).

Own files: every cache writer saves through `save_cached`, which writes atomically and puts infoflow's
header (``checkpoint.CACHE_HEADER``: ``{"format": 1, "file": <file name>}``) into the saved dict; loaders never
see it (`checkpoint.load_file` strips it).

Broken files: `load_cached` deletes a file that does not load or validate (missing keys, wrong shapes, NaN)
only when it is infoflow's own: inside the cache folder *and* carrying the header with its own file name.
It warns once (`CorruptCacheWarning`) and the caller rebuilds. Any other broken file (no header, unreadable
or truncated, renamed, outside the cache folder) may be the user's: it is left byte for byte untouched and
is a `DataError` naming it. `ensure_writable` checks a cache directory before any work that writes into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf
from torch import nn

from infoflow.errors import DataError
from infoflow.utils.checkpoint import CACHE_HEADER, atomic_save, load_file

T = TypeVar("T")

#: data-config keys that never change any example: how the data are loaded, not what they are.
#: Every other key (split sizes, seeds, paths, image size, ...) is part of the data's identity.
LOADER_KEYS = frozenset({"batch_size", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor"})
#: data-config keys that choose *which* examples a split holds (split sizes, held-out split, annotations)
#: but not what an image looks like: a trained readout stays valid for the same images when they change.
SELECTION_KEYS = frozenset({"num_train", "num_val", "num_test", "val_path", "val_fraction", "bbox_dir"})

#: version of the cache header written by `save_cached`
CACHE_FORMAT = 1

#: named built-in weights -> function giving their current version for a zoo model name (registered by their
#: maker); a model without such weights gets a ValueError
WEIGHTS_VERSIONS: dict[str, Callable[[str], str]] = {}

_CACHE_DIR: Path | None = None


class CorruptCacheWarning(UserWarning):
    """One of infoflow's own cache files (see `is_own_cache_file`) does not load or validate; it is deleted and rebuilt."""


def cache_dir() -> Path:
    """The cache root: set by `using_cache_dir` (``paths.cache_dir``), else ``$INFOFLOW_CACHE``, else
    ``~/.cache/infoflow``."""
    if _CACHE_DIR is not None:
        return _CACHE_DIR
    return Path(os.environ.get("INFOFLOW_CACHE") or Path.home() / ".cache" / "infoflow").expanduser()


@contextmanager
def using_cache_dir(path: str | Path | None) -> Iterator[Path]:
    """Make `path` the cache root (see `cache_dir`) inside the block; None keeps the current one."""
    global _CACHE_DIR
    before = _CACHE_DIR
    if path is not None:
        _CACHE_DIR = Path(path).expanduser()
    try:
        yield cache_dir()
    finally:
        _CACHE_DIR = before


def _plain(obj: Any) -> Any:
    """Configs, tuples, paths and tensors as JSON-able values (dict keys sorted by `json.dumps`)."""
    if OmegaConf.is_config(obj):
        return _plain(OmegaConf.to_container(obj, resolve=True))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def digest(obj: Any) -> str:
    """SHA-256 (64 hex digits) of `obj` as canonical JSON (sorted keys): equal values, equal digests."""
    text = json.dumps(_plain(obj), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_signature(data: Mapping[str, Any] | None, ignore: frozenset[str] = LOADER_KEYS) -> dict[str, Any] | None:
    """The data config without the `ignore` keys (default `LOADER_KEYS`), keys sorted; None stays None."""
    if data is None:
        return None
    plain = _plain(data)
    return {k: v for k, v in sorted(plain.items()) if k not in ignore}


def _update(sha: Any, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    sha.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
    sha.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and values (e.g. the images a statistic was estimated on)."""
    sha = hashlib.sha256()
    _update(sha, "", tensor)
    return sha.hexdigest()


def tensor_fingerprint(module: nn.Module) -> str:
    """SHA-256 of all parameters and buffers (names, shapes, dtypes, values): identifies exact weights,
    so e.g. two random initialisations (weights ``none``) never share a cache."""
    sha = hashlib.sha256()
    for name, tensor in sorted({**dict(module.named_parameters()), **dict(module.named_buffers())}.items()):
        _update(sha, name, tensor)
    return sha.hexdigest()


def weights_id(weights: str | Path, model: str) -> str:
    """Identify zoo `model`'s weights: a registered name with the model's version (``default-v3-...``, see
    `WEIGHTS_VERSIONS`), a checkpoint file by stem, resolved path, size and modification time, otherwise the
    name itself."""
    weights = str(weights)
    if weights in WEIGHTS_VERSIONS:
        try:
            return f"{weights}-{WEIGHTS_VERSIONS[weights](model)}"
        except (KeyError, ValueError):  # the model has no such weights: building it will say so
            return weights
    path = Path(weights).expanduser()
    if path.is_file():
        st = path.stat()
        return f"{path.stem}-{digest([str(path.resolve()), st.st_size, st.st_mtime_ns])[:8]}"
    return weights


def cache_key(
    model: str,
    weights: str | Path,
    layer: str | None,
    data: Mapping[str, Any] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> str:
    """Stable SHA-256 key (64 hex digits) of a cached result.

    Args:
        model: zoo model name.
        weights: as given to `get_model` (identified with `weights_id`).
        layer: layer name or module path (None for results of the whole network).
        data: data config (its `LOADER_KEYS` are ignored); None when the result does not depend on data.
        recipe: every other setting that changes the result (sample counts, input size, tau, ...).
    """
    return digest({"model": model, "weights": weights_id(weights, model), "layer": layer,
                   "data": data_signature(data), "recipe": _plain(dict(recipe or {}))})


def cache_file(root: str | Path, model: str, layer: str | None, key: str, suffix: str = ".pt") -> Path:
    """``root/<model>-<layer>-<key[:16]>.pt``: readable, and unique per `cache_key`."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model}-{layer}" if layer is not None else model)
    return Path(root) / f"{name}-{key[:16]}{suffix}"


def cache_path(cfg: Any, kind: str, layer: str, weights: str | None = None, **recipe: Any) -> Path:
    """File under ``cfg.paths.cache_dir/kind`` for a result of (``cfg.model.name``, `weights` (default
    ``cfg.weights``), `layer`, ``cfg.data``, `recipe`), e.g. the estimator of a layer with ``samples=5000``."""
    weights = cfg.weights if weights is None else weights
    key = cache_key(cfg.model.name, weights, layer, cfg.data, recipe)
    return cache_file(Path(cfg.paths.cache_dir) / kind, cfg.model.name, layer, key)


def _cache_path_resolver(kind: str, layer: str, samples: int | None = None, *, _root_: Any) -> str:
    """``${cache_path:KIND,LAYER,SAMPLES}``: `cache_path` for LAYER, the layer of the node that owns the cache
    (``${.layer}`` of the method, never the top-level shorthand), with SAMPLES as its sample count."""
    recipe = {} if samples is None else {"samples": int(samples)}
    return str(cache_path(_root_, kind, str(layer), **recipe))


OmegaConf.register_new_resolver("cache_path", _cache_path_resolver, replace=True)


def ensure_writable(
    directory: str | Path, setting: str = "paths.cache_dir (default: $INFOFLOW_CACHE, else ~/.cache/infoflow)"
) -> Path:
    """Create `directory` and check that files can be written there, before any work that writes into it.

    Raises DataError naming the directory and `setting`, the option to change.
    """
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DataError(f"cache directory {directory} is not writable ({err.strerror or err}): "
                        f"set {setting} to a writable directory") from None
    return directory


def is_in_cache_dir(path: str | Path) -> bool:
    """Whether `path` lies inside infoflow's cache folder (`cache_dir`), where infoflow names every file."""
    try:
        Path(path).expanduser().resolve().relative_to(cache_dir().resolve())
    except ValueError:
        return False
    return True


def save_cached(obj: Mapping[str, Any], path: str | Path) -> Path:
    """Save the dict `obj` atomically at `path` with infoflow's cache header (``CACHE_HEADER``), which marks
    the file as infoflow's own cache file (see `load_cached`); `checkpoint.load_file` strips the header."""
    path = Path(path)
    if CACHE_HEADER in obj:
        raise ValueError(f"a cached dict must not hold the key {CACHE_HEADER!r}")
    return atomic_save({**obj, CACHE_HEADER: {"format": CACHE_FORMAT, "file": path.name}}, path)


def is_own_cache_file(path: str | Path) -> bool:
    """Whether `path` is infoflow's own cache file: inside `cache_dir` and readable with infoflow's header
    naming this very file (a renamed, foreign, truncated or headerless file is not)."""
    path = Path(path)
    if not is_in_cache_dir(path):
        return False
    try:
        header = load_file(path, keep_header=True).get(CACHE_HEADER)
    except Exception:  # noqa: BLE001  (unreadable: nothing proves that infoflow wrote it)
        return False
    return isinstance(header, dict) and header.get("file") == path.name


def load_cached(path: str | Path, load: Callable[[Path], T], what: str = "cached result") -> T | None:
    """``load(path)``, or None when `path` is missing or is a broken file of infoflow's own cache.

    `load` reads and validates the file and raises on a bad one (unreadable, truncated, missing keys,
    wrong shapes); a file that loads is used whether or not it has the header. A broken file that
    `is_own_cache_file` gets one `CorruptCacheWarning` and is deleted so that the caller rebuilds it. Any
    other broken file is never deleted or overwritten: a `DataError` names it and says what to do.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load(path)
    except Exception as err:  # noqa: BLE001  (any failure to read or validate)
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        if is_own_cache_file(path):
            warnings.warn(f"cache file {path} is corrupt ({reason}); deleting it and rebuilding",
                          CorruptCacheWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        why = ("it was not written by infoflow's cache (no readable infoflow header)" if is_in_cache_dir(path)
               else f"it lies outside infoflow's cache folder {cache_dir()}")
        raise DataError(f"{path} does not hold a valid {what} ({reason}); {why}, so it is left untouched: "
                        "remove it yourself, or choose another path (or another paths.cache_dir)") from None
