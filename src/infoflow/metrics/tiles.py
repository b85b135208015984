"""Square tiles over an image: the unit that the degradation and Sensitivity-n metrics perturb."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from infoflow.errors import ConfigError


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of `tile_size` pixels over an (height, width) image, numbered row-major.

    When `tile_size` does not divide the image, the last row / column of tiles is cut at the border.
    """

    height: int
    width: int
    tile_size: int

    def __post_init__(self) -> None:
        if min(self.height, self.width, self.tile_size) < 1:
            raise ConfigError(
                f"tile_size and the image size must be integers >= 1, got tile_size={self.tile_size} for "
                f"{self.height}x{self.width} images"
            )

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols

    def pixel_tiles(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(H, W) int64: the tile index of every pixel."""
        r = torch.arange(self.height, device=device) // self.tile_size
        c = torch.arange(self.width, device=device) // self.tile_size
        return r[:, None] * self.cols + c[None, :]

    def tile_sums(self, maps: torch.Tensor) -> torch.Tensor:
        """Sum of (N, H, W) maps within each tile -> (N, num_tiles), in float64."""
        t = self.tile_size
        padded = F.pad(maps.double(), (0, self.cols * t - self.width, 0, self.rows * t - self.height))
        return padded.view(-1, self.rows, t, self.cols, t).sum(dim=(2, 4)).flatten(1)

    def tile_areas(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(num_tiles,) float64 pixels per tile (smaller for tiles cut at the border)."""
        return torch.bincount(self.pixel_tiles(device).flatten(), minlength=self.num_tiles).double()

    def tile_means(self, maps: torch.Tensor) -> torch.Tensor:
        """Mean of (N, H, W) maps within each tile -> (N, num_tiles), in float64 (`tile_sums` / `tile_areas`)."""
        return self.tile_sums(maps) / self.tile_areas(maps.device)
