"""Chunk sizes chosen by measurement: time a few candidates once per setting, cache the fastest.

Where infoflow splits independent work into chunks of a fixed number of items (Per-Sample fits, metric
perturbations), the fastest chunk size depends on the machine, the network, the input size and the
precision, and batching may be slower than one item at a time (cache pressure on CPUs). `choose_chunk`
measures the cost of each candidate c (seconds per item: `timed` takes the best of a few calls after a
warm-up; a caller may model the cost instead, e.g. the Per-Sample fit's fixed and per-step parts measured
apart), picks the fastest, reports it
and stores it in ``<cache dir>/autotune.json`` (atomic write) under a digest of the key plus the device,
the precision and the thread count, so the measurement runs once per setting. Batching is exact, so the
choice changes the speed only, never the results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from infoflow.utils.cache import cache_dir, digest
from infoflow.utils.checkpoint import atomic_write

CANDIDATES = (1, 2, 4, 8, 16)
FILE = "autotune.json"
#: the way choices are measured; part of the cache key, so a change measures again
VERSION = 2


def network_key(network: object) -> dict[str, Any]:
    """What a timing depends on in a network besides the inputs: its type and its parameter count."""
    params = sum(p.numel() for p in network.parameters()) if isinstance(network, torch.nn.Module) else 0
    return {"network": type(network).__name__, "parameters": params}


def full_key(key: Mapping[str, Any], device: torch.device | str, precision: str) -> dict[str, Any]:
    """`key` with the device, precision and thread count that the timing depends on."""
    return {**key, "device": str(device), "precision": str(precision), "threads": torch.get_num_threads(),
            "version": VERSION}


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(
    run: Callable[[int], Any], device: torch.device | str = "cpu", repeats: int = 3, warmup: bool = True
) -> Callable[[int], float]:
    """A cost for `choose_chunk`: the shortest wall time (s) of `repeats` calls ``run(c)``, after one untimed
    warm-up call (the allocator's and the kernels' first use) with `warmup`."""

    def seconds(c: int) -> float:
        if warmup:
            run(c)
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            run(c)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        return best

    return seconds


def choose_chunk(
    key: Mapping[str, Any],
    cost: Callable[[int], float],
    device: torch.device | str = "cpu",
    precision: str = "32",
    candidates: Sequence[int] = CANDIDATES,
    path: str | Path | None = None,
    report: Callable[[str], None] = print,
    give_up: float = 1.5,
) -> int:
    """The chunk size among `candidates` (ascending) with the least time per item, ``cost(c) / c``.

    `cost(c)`: the seconds one call with c items takes (e.g. `timed`). Larger candidates are not measured
    once a candidate is `give_up` times slower per item than the best so far (a chunk that big only gets
    slower, and timing it would cost the most). Cached in `path` (default ``<cache dir>/autotune.json``)
    under the digest of ``full_key(key, ...)``; a cached choice is returned without measuring.
    """
    path = Path(path) if path is not None else cache_dir() / FILE
    entry = full_key(key, device, precision)
    name = digest(entry)
    cached = _load(path).get(name)
    if isinstance(cached, dict) and isinstance(cached.get("chunk"), int):
        return int(cached["chunk"])
    per_item: dict[int, float] = {}
    for c in sorted(set(candidates)):
        per_item[c] = cost(c) / c
        if per_item[c] > give_up * min(per_item.values()):
            break
    chunk = min(per_item, key=per_item.__getitem__)
    data = _load(path)  # re-read: another process may have added entries meanwhile
    data[name] = {"chunk": chunk, "key": {k: str(v) for k, v in entry.items()},
                  "seconds_per_item": {str(c): t for c, t in per_item.items()}}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True)))
    report(f"autotune {dict(key)}: chunk size {chunk} (s per item: "
           + ", ".join(f"{c}: {t:.3g}" for c, t in per_item.items()) + f"), cached in {path}")
    return chunk
