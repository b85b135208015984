"""When an evaluation callback runs: after every `every_n_epochs`-th training epoch (epochs counted from 1)
and after the last one; with ``at_start`` also once before training (epoch 0, the initial weights)."""

from __future__ import annotations


def is_due(epoch: int, every_n_epochs: int, max_epochs: int | None) -> bool:
    """Whether to evaluate after `epoch` epochs trained (>= 1)."""
    last = max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs
    return epoch % every_n_epochs == 0 or last
