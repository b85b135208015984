"""The built-in default classifier for the `shapes` dataset: four conv blocks and a linear layer."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from infoflow.models.entry import MODELS, ModelEntry
from infoflow.models.layers import shapesnet_layers
from infoflow.models.pretrained import default_state_dict


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (padding 1, no bias), batch norm, ReLU: (N, cin, H, W) -> (N, cout, H, W)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShapesNet(nn.Module):
    """conv1..conv4 blocks (conv-BN-ReLU), 2x2 max-pooling after conv1..conv3, global average pool, fc.

    For a 64x64 input the block outputs are 64, 32, 16 and 8 pixels wide.
    """

    def __init__(self, num_classes: int = 4, widths: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(3, widths[0])
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = conv_bn_relu(widths[0], widths[1])
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = conv_bn_relu(widths[1], widths[2])
        self.pool3 = nn.MaxPool2d(2)
        self.conv4 = conv_bn_relu(widths[2], widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.conv4(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@MODELS.register("shapesnet")
def shapesnet() -> ModelEntry:
    """The built-in default classifier (64x64 `shapes` images, 4 classes), layers named ``conv1``, ..., ``fc``."""
    return ModelEntry(ShapesNet, shapesnet_layers, (3, 64, 64), 4, default_weights=partial(default_state_dict, "shapesnet"))
