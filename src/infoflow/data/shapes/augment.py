"""Training-time transforms of `shapes` batches: dihedral symmetries, random labels for no-object images."""

from __future__ import annotations

import torch

from infoflow.data.shapes.masks import mask_to_box


def dihedral_augment(batch: dict[str, torch.Tensor], element: torch.Tensor) -> dict[str, torch.Tensor]:
    """Apply dihedral group element `element[i]` in 0..7 (rot90 k = e % 4, then a flip if e >= 4) to image i,
    its ``mask`` and ``box_mask`` (N, [C,] H, W); ``box`` is recomputed from the transformed box mask."""
    out = dict(batch)
    for key in ("image", "mask", "box_mask"):
        if key not in batch:
            continue
        x = batch[key].clone()
        for e in range(8):
            sel = element == e
            if sel.any():
                y = torch.rot90(batch[key][sel], e % 4, dims=(-2, -1))
                x[sel] = y.flip(-1) if e >= 4 else y
        out[key] = x
    if "box" in batch and "box_mask" in out:
        out["box"] = mask_to_box(out["box_mask"]).to(batch["box"].dtype)
    return out


def relabel_empty(batch: dict[str, torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """Give every image without an object (an empty ``mask``) a fresh uniformly random label in
    0..num_classes-1 (from torch's global generator).

    Cross-entropy against labels drawn anew at each use is, in expectation, cross-entropy against the
    uniform distribution over the classes: a classifier learns to predict every class with probability
    1/num_classes when no object is visible, and no class becomes the answer to "nothing".
    """
    empty = ~batch["mask"].flatten(1).any(1)
    if not empty.any():
        return batch
    label = batch["label"].clone()
    label[empty] = torch.randint(0, num_classes, (int(empty.sum()),), device=label.device)
    return {**batch, "label": label}
