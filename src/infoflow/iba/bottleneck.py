"""The information bottleneck on a feature map (Schulz et al. 2020, section 3.1).

``Z = lam * R + (1 - lam) * eps`` with ``eps ~ N(mu_R, sigma_R)`` per element, and the capacity, the
element-wise KL divergence between the distribution of Z given R and the noise distribution, in nats.
Shared by the Per-Sample and the Readout Bottleneck.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

LN2 = math.log(2.0)


def capacity(r_hat: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Element-wise KL( N(lam*r + (1-lam)*mu, (1-lam)^2 sigma^2) || N(mu, sigma^2) ) in nats.

    Args:
        r_hat: standardised features (r - mu) / sigma.
        lam: fraction of the signal let through, in [0, 1], broadcastable to `r_hat`.
    """
    one_minus = (1 - lam).clamp_min(1e-6)
    return -0.5 * (1 + 2 * torch.log(one_minus) - (lam * r_hat) ** 2 - one_minus**2)


class GaussianBlur(nn.Module):
    """Depthwise Gaussian smoothing of (N, C, H, W) maps with reflect padding; kernel 2*ceil(2 sigma)+1.

    torchvision's `gaussian_blur` (sigma 1: a 5x5 kernel); sigma <= 0 is the identity.
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = sigma
        self.size = 2 * math.ceil(2 * sigma) + 1

    @property
    def kernel(self) -> torch.Tensor:
        """(1, 1, k, k) the normalised Gaussian kernel the blur applies (for inspection)."""
        radius = self.size // 2
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(x**2) / (2 * self.sigma**2))
        k = k / k.sum()
        return (k[:, None] * k[None, :])[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return x
        return TF.gaussian_blur(x, [self.size, self.size], [self.sigma, self.sigma])


class Bottleneck(nn.Module):
    """Noise injection and capacity for one layer, given its estimated statistics.

    Args:
        mean, std: per-element (C, H, W) feature statistics; std already clamped.
        active: (C, H, W) bool mask of active elements; capacity and output are zero outside it.
        sigma: Gaussian smoothing of lam in feature pixels (0 disables it).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, active: torch.Tensor, sigma: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("active", active.float())
        self.blur = GaussianBlur(sigma)

    def lam(self, alpha: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) lam = blur(sigmoid(alpha))."""
        return self.blur(torch.sigmoid(alpha))

    def capacity(self, r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) capacity in nats of features `r` under `lam`, zero at inactive elements."""
        return capacity((r - self.mean) / self.std, lam) * self.active

    def inject(self, r: torch.Tensor, lam: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) noisy features ``lam * r + (1 - lam) * eps``, zero at inactive elements.

        `noise` is standard normal of the shape of `r` (drawn when None); eps = mean + std * noise.
        """
        if noise is None:
            noise = torch.randn_like(r)
        return (lam * r + (1 - lam) * (self.mean + self.std * noise)) * self.active

    def forward(
        self, r: torch.Tensor, lam: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, capacity) for features `r` (N, C, H, W) and `lam` in [0, 1] (broadcastable)."""
        return self.inject(r, lam, noise), self.capacity(r, lam)


def capacity_to_heatmap(cap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-element capacity (N, C, h, w) in nats -> heatmap (N, H, W) in bits per input pixel.

    Sums over channels, converts to bits, resizes bilinearly to `size` = (H, W) and rescales so that the
    image total is exactly the total number of bits (the reference's h*w / (H*W) factor, corrected for the
    few per cent that bilinear resizing changes the sum at the borders).
    """
    bits = cap.sum(1, keepdim=True) / LN2
    up = F.interpolate(bits, size=size, mode="bilinear", align_corners=False)
    total, up_total = bits.sum((1, 2, 3), keepdim=True), up.sum((1, 2, 3), keepdim=True)
    return (up * torch.where(up_total > 0, total / up_total.clamp_min(1e-30), 0.0))[:, 0]
