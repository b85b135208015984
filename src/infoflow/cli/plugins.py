"""Plug-in names from Hydra's config group choices, so that no YAML repeats its file name.

A config of ``conf/model``, ``conf/method``, ``conf/task`` or ``conf/analysis`` selects the registered
plug-in of its file name: ``method=iba`` composes ``conf/method/iba.yaml`` and builds ``METHODS.get("iba")``.
Hydra records every choice of the composition in ``hydra.runtime.choices`` (``{"method": "iba",
"method@analysis.rows.iba-beta1": "iba", ...}``); `name_plugins` writes each one into its config node as
``name`` once, right after the composition, so the code reads ``cfg.method.name`` from a plain config
that needs no Hydra at run time (a pickled or saved config keeps it).

A config file may still set ``name:`` itself to reuse a registered plug-in under another file name (e.g. a
``conf/method/iba-fast.yaml`` with ``name: iba`` and other settings); that ``name`` is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

#: the config groups whose option names a registered plug-in
PLUGIN_GROUPS = ("model", "method", "task", "analysis")


def name_plugins(cfg: DictConfig, choices: Mapping[str, str | None]) -> DictConfig:
    """Set ``name`` of each plug-in node of `cfg` to its config group choice (unless the node names itself).

    Args:
        cfg: the composed job config (changed in place and returned).
        choices: Hydra's ``hydra.runtime.choices``: ``group`` or ``group@package`` -> the option chosen. The
            node is the package (``method@analysis.rows.iba-beta1`` -> ``analysis.rows.iba-beta1``), else
            the group's own key (``task`` -> ``task``, also for a ``@package _global_`` task file).
    """
    for key, option in choices.items():
        group, _, package = str(key).partition("@")
        if group not in PLUGIN_GROUPS or option is None:
            continue
        node = OmegaConf.select(cfg, package or group, default=None)
        if isinstance(node, DictConfig) and node.get("name") is None:
            with open_dict(node):
                node.name = str(option).rpartition("/")[2]
    return cfg


def name_plugins_from_hydra(cfg: DictConfig) -> DictConfig:
    """`name_plugins` with the choices of the running Hydra job (the entry points' task functions)."""
    from hydra.core.hydra_config import HydraConfig

    return name_plugins(cfg, HydraConfig.get().runtime.choices)
