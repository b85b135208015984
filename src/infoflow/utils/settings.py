"""Checks of the settings both entry points share, run before any work; each raises a one-line `ConfigError`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from infoflow.errors import ConfigError


def check_beta(beta: Any, name: str = "beta") -> float:
    """`beta` as a float; the one rule everywhere: a finite number >= 0 (0: no information penalty)."""
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta) or beta < 0:
        raise ConfigError(f"{name} must be a finite number >= 0 (in units of 1/k, e.g. beta=10 for 10/k), got {beta!r}")
    return float(beta)


def check_count(value: Any, name: str) -> int:
    """`value` as an int >= 1 (a number of images, epochs, ...)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """`value`, which must be one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{name}={value}: not a valid choice; choose one of: {' | '.join(choices)}")
    return str(value)


def check_trainer(cfg: DictConfig) -> None:
    """A GPU trainer (``trainer=gpu|ddp``) on a machine where torch sees no CUDA GPU stops here."""
    trainer = cfg.get("trainer") or {}
    if str(trainer.get("accelerator", "")) in ("gpu", "cuda") and not torch.cuda.is_available():
        ddp = "ddp" in str(trainer.get("strategy", ""))
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} needs a CUDA GPU, but torch sees none on this machine: use "
            + ("trainer=ddp_cpu (DDP over CPU processes)" if ddp else "trainer=cpu")
        )


def check_common(cfg: DictConfig) -> None:
    """The settings of train.py and evaluate.py alike: beta and the trainer."""
    if "beta" in cfg:
        check_beta(cfg.beta)
    check_trainer(cfg)
