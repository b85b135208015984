"""The feature statistics of a readout's layers, estimated in one pass over the data (DDP-aware)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

from infoflow.iba.estimator import Estimator
from infoflow.utils.cache import ensure_writable, load_cached

if TYPE_CHECKING:
    from infoflow.iba.readout.network import ReadoutBottleneck


@torch.no_grad()
def fit_statistics(
    readout: ReadoutBottleneck,
    loader: DataLoader,
    max_samples: int = 5000,
    caches: Mapping[str, str | Path] | None = None,
    cached: Iterable[str] = (),
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Estimator]:
    """Estimate the statistics of every layer in `readout.stat_layers` (by name) in one pass over the data.

    The first `max_samples` images of `loader`'s dataset are used, in order; under DDP rank r takes images
    r, r + world_size, ..., and the estimators' float64 sums are summed over the ranks, so every rank ends
    with the statistics of one process that saw all of them. Layers named in `cached` are loaded from
    ``caches[name]`` instead; fitted ones are saved there by rank 0.
    """
    device = readout.bottleneck.mean.device
    estimators = {name: Estimator(readout.shapes[path]).to(device) for name, path in readout.stat_layers.items()}
    # a corrupt cache file is deleted and re-estimated (on every rank alike)
    loaded = {name for name in cached
              if caches is not None and load_cached(caches[name], estimators[name].load) is not None}
    todo = [name for name in estimators if name not in loaded]
    if not todo:
        return estimators
    if rank == 0 and caches is not None:
        for name in todo:
            ensure_writable(Path(caches[name]).parent)
    dataset = loader.dataset
    indices = range(rank, min(len(dataset), max_samples), world_size)  # type: ignore[arg-type]
    shard = DataLoader(Subset(dataset, indices), batch_size=loader.batch_size, num_workers=loader.num_workers,
                       collate_fn=loader.collate_fn)
    for batch in shard:
        features, _ = readout.features(batch["image"].to(device))
        for name in todo:
            estimators[name].update(features[readout.stat_layers[name]])
    for name in todo:
        with estimators[name].sync_context(should_sync=world_size > 1):
            if rank == 0 and caches is not None:
                estimators[name].save_cache(caches[name])
            synced = {key: value.clone() for key, value in estimators[name].metric_state.items()}
        for key, value in synced.items():  # keep the summed states (the context restores the local ones)
            setattr(estimators[name], key, value)
    return estimators
