"""The whole-config check of the entry points, run before anything is built (`check_config`)."""

from __future__ import annotations

from omegaconf import DictConfig

from infoflow.utils.validation import check_common


def check_config(cfg: DictConfig) -> None:
    """Refuse a bad composed config of train.py or evaluate.py with a one-line `ConfigError`."""
    check_common(cfg)
