"""The evaluated images: the first images of the test split, each with its global ``index``, split over
processes without padding, so 1 and N processes see exactly the same images."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from infoflow.data.base import ImageDataModule


class _Indexed(Dataset):
    """The first `size` items of `dataset`, each with its ``index`` (int64)."""

    def __init__(self, dataset: Any, size: int) -> None:
        self.dataset, self.size = dataset, min(size, len(dataset))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "index": torch.tensor(i)}


def evaluation_loader(dm: ImageDataModule, num_images: int) -> DataLoader:
    """The first `num_images` test images in the test loader's batches; under torch.distributed each process
    gets a disjoint, unpadded share (Lightning keeps a DistributedSampler it is given)."""
    dm.setup("test")
    base = dm.test_dataloader()
    data = _Indexed(base.dataset, num_images)
    sampler = UnrepeatedDistributedSampler(data, shuffle=False) if dist.is_available() and dist.is_initialized() \
        else None
    return DataLoader(data, batch_size=base.batch_size, sampler=sampler, num_workers=base.num_workers,
                      collate_fn=base.collate_fn)
