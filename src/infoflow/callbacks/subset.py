"""The fixed evaluation subset, its sharding over processes, and per-image seeds.

`num_images` images of the ``val`` or ``test`` split, at indices drawn once with `seed` (sorted). Every
process loads the whole subset and measures its share ``indices[rank::world]``; every per-image quantity
is seeded by the image's global index (`image_seed`), so the numbers do not depend on the number of
processes.
"""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from infoflow.data.base import ImageDataModule
from infoflow.discarding.features import noise_generator
from infoflow.errors import ConfigError

SPLITS = ("val", "test")


def image_seed(seed: int, index: int, stream: str) -> int:
    """A seed for one image of the subset (by its global index), well separated from its neighbours'."""
    return int(noise_generator(seed, index, stream).initial_seed())


def load_subset(dm: ImageDataModule, split: str, num_images: int, seed: int, owner: str
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The subset as one batch of tensors (CPU), and its global indices (sorted); `owner` names the setting
    in errors (e.g. ``callbacks.layerwise``)."""
    dm.setup("validate" if split == "val" else "test")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    dataset = loader.dataset
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError(f"{owner}.split={split}: the split is empty")
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=gen)[:num_images].sort().values
    items = [dataset[int(i)] for i in indices]
    batch = loader.collate_fn(items) if loader.collate_fn is not None else default_collate(items)
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, indices


def shard(count: int, rank: int, world_size: int) -> torch.Tensor:
    """Positions (into a subset of `count` images) that process `rank` measures: every world_size-th."""
    return torch.arange(count)[rank::world_size]
