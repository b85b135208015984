"""Reconstruction uncertainty (RU) per image and layer.

Pixel-wise RU (paper, eq. 8, with mu_rec = x):

    RU_i = 0.5 * log E_delta[ mean_c (x_ci - g(h(x + sigma * delta))_ci)² ] + 0.5 log(2 pi e)    [nats]

with x in the [0, 1] pixel space, g the layer's trained decoder (`decoder.DecoderNet`) and sigma the
noise scale found by the constrained SID optimisation of the same image and layer (`sid.SIDResult`):
RU is computed under the same constraint E||h(x') - f||² = alpha delta_f², with the SID's sigma rather
than a second optimisation of the RU objective (eq. 11). The squared error is averaged over the colour
channels, so RU is a per-pixel map like SID; it includes the decoder's own reconstruction error.
`per_pixel` is the mean over pixels and `total = C * sum_i RU_i`, as for SID. Batched over layers like SID.
Precision: the network's passes follow `LayerFeatures.precision` (features returned as fp32); the
decoder, the squared errors and their means are fp32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from infoflow.discarding.decoder import MissingDecoderError, load_decoders
from infoflow.discarding.features import LayerFeatures, noise_generator, resolve_layers
from infoflow.discarding.maps import ENTROPY_CONST, LayerMaps
from infoflow.discarding.sid import SIDResult
from infoflow.models.zoo import ZooModel


@dataclass
class RUResult(LayerMaps):
    """RU of N images at L layers (CPU tensors).

    Attributes:
        layers: the L layer names.
        mse: (N, L, H, W) E[mean_c (x - g(h(x')))²], squared [0, 1] units.
        channels: C.
    """

    layers: list[str]
    mse: torch.Tensor
    channels: int

    @property
    def maps(self) -> torch.Tensor:
        """(N, L, H, W) pixel-wise RU, nats."""
        return 0.5 * self.mse.log() + ENTROPY_CONST



def compute_ru(
    features: LayerFeatures,
    images01: torch.Tensor,
    sid: SIDResult,
    decoders: Mapping[str, nn.Module],
    samples: int = 16,
    seed: int = 0,
    max_rows: int = 256,
) -> RUResult:
    """RU of `images01` (N, C, H, W) in [0, 1] at the layers of `sid`, with the SID's sigma.

    Args:
        decoders: layer name -> decoder (feature -> [0, 1] image), in eval mode.
        samples: noise draws per (image, layer).
    """
    missing = [name for name in sid.layers if name not in decoders]
    if missing:
        raise MissingDecoderError(missing[0])
    n, c, h, w = images01.shape
    if tuple(sid.log_sigma.shape) != (n, len(sid.layers), h, w):
        raise ValueError(
            f"SID result {tuple(sid.log_sigma.shape)} does not fit images {tuple(images01.shape)}"
        )
    unknown = [name for name in sid.layers if name not in features.paths]
    if unknown:
        raise ValueError(f"layers {unknown} are not among the extracted layers {list(features.paths)}")
    order = {name: i for i, name in enumerate(features.probe(images01))}
    elements = sorted(
        ((i, j) for j in range(len(sid.layers)) for i in range(n)), key=lambda e: order[sid.layers[e[1]]]
    )
    mse = torch.empty(sid.log_sigma.shape)
    per = max(1, max_rows // samples)
    with torch.no_grad():
        for start in range(0, len(elements), per):
            chunk = elements[start : start + per]
            gens = [noise_generator(seed, i, sid.layers[j], "ru") for i, j in chunk]
            noise = torch.stack([torch.randn((samples, c, h, w), generator=g) for g in gens]).to(images01)
            sigma = torch.stack([sid.log_sigma[i, j] for i, j in chunk]).exp().to(images01)
            x = images01[torch.tensor([i for i, _ in chunk], device=images01.device)]
            noisy = (x[:, None] + sigma[:, None, None] * noise).flatten(0, 1)
            names = [sid.layers[j] for _, j in chunk]
            counts = [names.count(name) for name in features.order]
            feats = features(noisy, groups=[k * samples for k in counts])
            offset = 0
            for name, count in zip(features.order, counts, strict=True):
                if count == 0:
                    continue
                rec = decoders[name](feats[name]).view(count, samples, c, h, w)
                err = (rec - x[offset : offset + count, None]).pow(2).mean((1, 2)).cpu()  # (count, H, W)
                for k, (i, j) in enumerate(chunk[offset : offset + count]):
                    mse[i, j] = err[k]
                offset += count
    return RUResult(list(sid.layers), mse, c)


def layerwise_ru(
    model: ZooModel,
    images01: torch.Tensor,
    sid: SIDResult,
    mean: Sequence[float],
    std: Sequence[float],
    decoder_dir: str,
    samples: int = 16,
    seed: int = 0,
    precision: str | int = 32,
) -> RUResult:
    """RU of a zoo model at the layers of `sid`, with decoders from `decoder_dir` (`decoder.decoder_path`);
    `precision` of the network's passes (`LayerFeatures`).

    A layer without a trained decoder raises `MissingDecoderError`.
    """
    decoders = {k: v.to(images01.device) for k, v in load_decoders(decoder_dir, model, sid.layers).items()}
    features = LayerFeatures(model.module, resolve_layers(model, sid.layers), mean, std,
                             precision=precision).to(images01.device)
    return compute_ru(features, images01, sid, decoders, samples, seed)
