"""Seeding and deterministic kernels for the parts of a run that should give the same bits every time."""

from __future__ import annotations

import torch


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and torch (also for dataloader workers) and make torch use deterministic
    kernels where it has them (``warn_only``: an op without one warns instead of failing).

    On one machine with one torch build and thread count, a seeded run then gives the same bits each time.
    Across machines it need not: float results may depend on the number of threads (how reductions are
    split), the CPU's instruction set (the oneDNN/BLAS kernel chosen) and the torch/BLAS versions.
    """
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
