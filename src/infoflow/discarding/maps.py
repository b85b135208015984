"""What SID and RU results share: pixel-wise maps in nats, summarised per pixel and per image."""

from __future__ import annotations

import math

import torch

#: 0.5 log(2 pi e): the entropy of a unit Gaussian, nats
ENTROPY_CONST = 0.5 * math.log(2 * math.pi * math.e)


class LayerMaps:
    """Mixin of a result with ``layers`` (L names), ``channels`` (C) and ``maps`` (N, L, H, W) in nats."""

    layers: list[str]
    channels: int

    @property
    def maps(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def per_pixel(self) -> torch.Tensor:
        """(N, L) mean of the map over pixels, nats per pixel (= nats per input unit)."""
        return self.maps.mean((-2, -1))

    @property
    def total(self) -> torch.Tensor:
        """(N, L) C * sum of the map: over all C x H x W input units, nats."""
        return self.channels * self.maps.sum((-2, -1))

    def layer(self, name: str) -> torch.Tensor:
        """(N, H, W) map of one layer."""
        return self.maps[:, self.layers.index(name)]
