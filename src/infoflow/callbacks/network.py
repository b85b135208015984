"""The network a Lightning module trains (or explains), as a `ZooModel` sharing its weights."""

from __future__ import annotations

import pytorch_lightning as pl
from torch import nn

from infoflow.data.base import ImageDataModule
from infoflow.errors import ConfigError
from infoflow.models.zoo import MODELS, ZooModel


def trained_network(module: pl.LightningModule, model_name: str, dm: ImageDataModule) -> ZooModel:
    """The network `module` trains (or explains), as a `ZooModel` sharing its weights.

    The readout task's module holds its classifier as ``readout.zoo``; the classifier-type tasks' modules
    hold the network as ``model`` (`model_name` names its zoo entry, for the layer names).
    """
    readout = getattr(module, "readout", None)
    if readout is not None and isinstance(getattr(readout, "zoo", None), ZooModel):
        return readout.zoo
    net = getattr(module, "model", None)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"the evaluation callbacks measure a classifier, but {type(module).__name__} holds none "
                          "(use them with task=classifier|distill|prune|readout)")
    entry = MODELS.get(model_name)()
    num_classes = int(getattr(module.hparams, "num_classes", 0) or dm.num_classes)
    return ZooModel(model_name, net, num_classes, tuple(dm.input_size), "training", entry.layers(net))
