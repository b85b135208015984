"""`Rows`: a torchmetrics state that gathers float result rows from every process."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


class Rows(Metric):
    """Result rows (R, K) float64 of this process; ``compute`` gathers every process's rows (NaN kept)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, rows: torch.Tensor) -> None:
        self.rows.append(rows.detach().to(self.device, torch.float64))

    def compute(self) -> torch.Tensor:
        rows = self.rows
        if isinstance(rows, list):
            return torch.cat(rows) if rows else torch.empty(0, 0, dtype=torch.float64)
        return rows
