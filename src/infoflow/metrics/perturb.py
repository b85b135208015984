"""What the perturbation metrics share: the classifier they run and the chunked runner (input checks:
`infoflow.utils.validation`).

Precision: with ``precision="bf16"`` (`infoflow.utils.precision`) only the classifier's passes on the
perturbed images run in bf16, on a prepared copy of the network (`perturbation_network`: batch norms folded,
bf16 weights, channels-last), except its Linear layers (the logit head stays fp32 and runs outside autocast,
as bf16 logits are too coarse for small logit differences); the perturbed images are built in fp32 and the outputs
(logits, probabilities) are taken in float64 by the metrics, so curves, areas and correlations are
float64 sums.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from infoflow.errors import ConfigError
from infoflow.models.zoo import ZooModel
from infoflow.utils.autotune import choose_chunk, network_key, timed
from infoflow.utils.precision import autocast, fp32_linear, prepare_network

#: images per pass that ``batch_size="auto"`` times
PERTURB_CANDIDATES = (16, 32, 64, 128, 256)

#: a classifier mapping normalised images (N, C, H, W) to logits (N, num_classes)
Classifier = nn.Module | Callable[[torch.Tensor], torch.Tensor] | ZooModel


def resolve_classifier(model: Classifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward function of `model` (a zoo model's network; modules must be in eval mode)."""
    if isinstance(model, ZooModel):
        model = model.module
    if isinstance(model, nn.Module) and model.training:
        raise ConfigError(
            "model is in training mode: the metric runs it on perturbed images, so put it in eval mode first"
            " (model.eval())"
        )
    if not callable(model):
        raise ConfigError(f"model must be an nn.Module, a callable or a ZooModel, got {type(model).__name__}")
    return model


def classifier_device(model: Callable[[torch.Tensor], torch.Tensor], fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer, else `fallback`."""
    if isinstance(model, nn.Module):
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        if first is not None:
            return first.device
    return fallback


def tune_key(model: Callable[[torch.Tensor], torch.Tensor], metric: str) -> dict[str, Any]:
    """The `run_perturbations` ``tune_key`` of `metric` on `model`: what the timing of ``batch_size="auto"``
    depends on besides the image shape, device, precision and threads (the network's type and size)."""
    return {"metric": metric, **network_key(model)}


@contextlib.contextmanager
def perturbation_network(
    model: Callable[[torch.Tensor], torch.Tensor], precision: str, example: torch.Tensor
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """The classifier as the perturbation passes run it (under `run_perturbations`' autocast).

    fp32: `model` itself. A reduced `precision` (resolved): for an `nn.Module`, a copy prepared for it by
    `prepare_network` (batch norms folded, reduced-precision weights, channels-last) whose Linear layers
    keep fp32 weights and run outside autocast (`fp32_linear`); it is made anew for every call, so it
    follows the weights of `model`. `example`: a probe input (1, C, H, W) on the model's device.
    """
    if precision == "32" or not isinstance(model, nn.Module):
        yield model
        return
    with torch.no_grad():
        net = prepare_network(model, precision, example, fp32_modules=(nn.Linear,))
    with fp32_linear(net):
        yield net


@torch.no_grad()
def run_perturbations(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    build: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_images: int,
    per_image: int,
    batch_size: int | str,
    device: torch.device,
    precision: str = "32",
    tune_key: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Evaluate all `num_images * per_image` perturbed images in batches of at most `batch_size`.

    ``batch_size="auto"``: the fastest of `PERTURB_CANDIDATES` images per pass, timed once on the first
    pairs per (`tune_key`, image shape, device, precision, threads) and cached (`infoflow.utils.autotune`);
    the values do not depend on it.

    Pairs (image i, perturbation j) are enumerated image-major. `build(i, j)` returns the perturbed images
    (B, C, H, W) for index tensors i, j (B,); `forward(batch, i)` returns one value row (B, ...) per image.
    `precision`: a resolved precision (`resolve_precision`) for the `forward` passes. Returns
    (num_images, per_image, ...).
    """
    total = num_images * per_image

    def chunk(start: int, size: int) -> torch.Tensor:
        pair = torch.arange(start, min(start + size, total), device=device)
        image, step = pair // per_image, pair % per_image
        batch = build(image, step)
        if batch.dim() == 4:  # convolutions run faster on channels-last inputs (same values)
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            return forward(batch, image)

    if batch_size == "auto":
        if total == 0:
            batch_size = 1
        else:
            shape = list(build(torch.zeros(1, dtype=torch.long, device=device),
                               torch.zeros(1, dtype=torch.long, device=device)).shape[1:])
            key = {"kind": "perturbations", **(tune_key or {}), "shape": shape}
            batch_size = choose_chunk(key, timed(lambda c: chunk(0, c), device), device, precision,
                                      [c for c in PERTURB_CANDIDATES if c <= max(total, PERTURB_CANDIDATES[0])])
    assert isinstance(batch_size, int)
    out = [chunk(start, batch_size) for start in range(0, total, batch_size)]
    values = torch.cat(out)
    return values.view(num_images, per_image, *values.shape[1:])

