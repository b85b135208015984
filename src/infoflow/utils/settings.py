"""Checks of the settings both entry points share, run before any work; each raises a one-line `ConfigError`."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from infoflow.errors import ConfigError
from infoflow.utils.validation import check_beta, check_choice, check_count

__all__ = ["check_beta", "check_choice", "check_common", "check_count", "check_trainer"]


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
