"""The rendered `shapes` images as a map-style dataset of normalised tensors with their ground truth."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from infoflow.data.shapes.masks import box_to_mask


class ShapesDataset(Dataset):
    """Pre-rendered images of `render_split`; items are dicts of ``image`` (3, H, W) float32 normalised
    with `mean`/`std`, ``label`` () int64, ``mask`` (H, W) bool, ``box_mask`` (H, W) bool and ``box`` (4,)."""

    def __init__(
        self, data: dict[str, torch.Tensor], mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.data = data
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask, box = self.data["mask"][i], self.data["box"][i]
        return {
            "image": (self.data["image"][i].float() / 255 - self.mean) / self.std,
            "label": self.data["label"][i],
            "mask": mask,
            "box_mask": box_to_mask(box, *mask.shape),
            "box": box,
        }
