"""One precision setting for the network's heavy passes: ``32`` (default), ``bf16`` or ``16-mixed``.

Only the analysed network's convolutions and matrix products (and their backward) run in reduced
precision, through `torch.autocast`: on an AMX CPU oneDNN runs bf16 convolutions on AMX tiles, on a
GPU on tensor cores. Everything that carries the numbers' meaning stays fp32 or float64: the callers cast
the network's outputs back to fp32 (`to_fp32`) and compute outside autocast (`full_precision`):

| quantity | precision |
|---|---|
| network convs / matmuls, forward and backward | bf16 (``bf16``) or fp16 (``16-mixed``) |
| network outputs (features, logits) | cast to fp32 right after the pass |
| Per-Sample alpha, lam, Adam state, capacity (nats), heatmaps (bits) | fp32 |
| bottleneck smoothing, noise injection, cross-entropy | fp32 (outside autocast) |
| estimator sums (mean / std of features) | float64 (`Estimator`) |
| SID log sigma, Lagrange multipliers, ||h(x') - f||², constraint ratio | fp32; ratio statistics float64 |
| metrics' perturbed images; the classifier's Linear layers (logit head) | fp32 (`fp32_linear`) |
| metrics' probabilities, areas, correlations | float64 |

Hardware without support: ``bf16`` on a CPU without native bf16 (no AVX512-BF16 / AMX) or a GPU without
bf16, and ``16-mixed`` on a CPU, FALL BACK to fp32 with one `PrecisionFallbackWarning` per (precision,
device type) and process: results stay correct, only slower. An unknown value raises a `ConfigError` listing
the valid ones.

`prepare_network` makes the copy of a FROZEN network that the fast reduced-precision loops run: batch norms
folded into the convolutions (`infoflow.utils.fold`), weights stored in bf16 (autocast would cast them
again at every call, as frozen weights are not cached) and channels-last memory. The values are those of
autocast up to the rounding of the folded weights.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from infoflow.errors import ConfigError
from infoflow.utils.fold import fold_batchnorm

#: the valid settings: fp32, bf16 mixed precision, fp16 mixed precision (GPU only)
PRECISIONS = ("32", "bf16", "16-mixed")
_ALIASES = {
    "32": "32", "32-true": "32", "fp32": "32", "float32": "32",
    "bf16": "bf16", "bf16-mixed": "bf16",
    "16-mixed": "16-mixed", "16": "16-mixed", "fp16": "16-mixed",
}
_DTYPES = {"bf16": torch.bfloat16, "16-mixed": torch.float16}
_LIGHTNING = {"32": "32-true", "bf16": "bf16-mixed", "16-mixed": "16-mixed"}
_warned: set[tuple[str, str]] = set()


class PrecisionFallbackWarning(UserWarning):
    """The requested reduced precision is not supported on this device: running in fp32."""


def parse_precision(value: object) -> str:
    """The canonical precision (one of `PRECISIONS`) for `value` (e.g. 32, "32", "bf16", "bf16-mixed").

    Raises a `ConfigError` listing the valid values for anything else.
    """
    key = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if key not in _ALIASES:
        raise ConfigError(f"unknown precision {value!r}; valid: {', '.join(PRECISIONS)}")
    return _ALIASES[key]


def _device_type(device: torch.device | str | None) -> str:
    return torch.device(device if device is not None else "cpu").type


def is_supported(precision: str, device: torch.device | str | None = None) -> bool:
    """Whether `precision` (canonical) runs natively on `device` (default: the CPU)."""
    kind = _device_type(device)
    if precision == "32":
        return True
    if kind == "cuda":
        if not torch.cuda.is_available():
            return False
        return torch.cuda.is_bf16_supported() if precision == "bf16" else True
    if kind == "cpu" and precision == "bf16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(value: object, device: torch.device | str | None = None) -> str:
    """`parse_precision(value)`, or ``"32"`` with one `PrecisionFallbackWarning` when `device` lacks support."""
    precision = parse_precision(value)
    if is_supported(precision, device):
        return precision
    kind = _device_type(device)
    if (precision, kind) not in _warned:
        _warned.add((precision, kind))
        warnings.warn(f"precision={precision} is not supported on this {kind} device: running in fp32 (precision=32)",
                      PrecisionFallbackWarning, stacklevel=2)
    return "32"


def autocast(precision: str, device: torch.device | str | None = None) -> contextlib.AbstractContextManager:
    """The context in which the network's passes run: `torch.autocast` for a reduced `precision`
    (canonical, already resolved), else a no-op."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(_device_type(device), dtype=_DTYPES[precision])


@contextlib.contextmanager
def full_precision(device: torch.device | str | None = None) -> Iterator[None]:
    """Switch autocast off (inside a Lightning ``bf16-mixed`` step, say) for the fp32 quantities."""
    with torch.autocast(_device_type(device), enabled=False):
        yield


@contextlib.contextmanager
def fp32_linear(module: object) -> Iterator[None]:
    """Run the `nn.Linear` layers of `module` (the logit head of a conv net) in fp32 inside autocast.

    bf16 logits have 8-bit mantissas (a step of 0.0625 at a logit of 10): too coarse for the small logit
    differences that Sensitivity-n correlates. The heads are a small part of a conv net's work. A `module`
    that is not an `nn.Module` is left as it is.
    """
    patched = [m for m in module.modules() if isinstance(m, nn.Linear)] if isinstance(module, nn.Module) else []
    for m in patched:
        m.forward = _fp32_forward(m.forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _fp32_forward(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return forward(to_fp32(x))

    return run


def to_fp32(x: torch.Tensor) -> torch.Tensor:
    """`x` as fp32 when it is a reduced-precision float tensor (no copy otherwise)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def lightning_precision(value: object, accelerator: str | None = "cpu") -> str:
    """Lightning Trainer's ``precision`` for `value` on `accelerator` (``cpu``, ``gpu``/``cuda``, ``auto``):
    ``32-true``, ``bf16-mixed`` or ``16-mixed``, after the fallback of `resolve_precision`."""
    kind = "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    return _LIGHTNING[resolve_precision(value, kind)]


def prepare_network(module: nn.Module, precision: str, example: torch.Tensor,
                    fp32_modules: tuple[type[nn.Module], ...] = (), fold_fp32: bool = False) -> nn.Module:
    """A frozen copy of `module` for passes in `precision` (resolved): batch norms folded, weights in the
    reduced dtype, channels-last; `module` itself unchanged. Run it under `autocast` (which casts its fp32
    inputs). For ``32`` the module itself is returned (exact fp32 results), unless `fold_fp32`: then an
    fp32 copy with batch norms folded and channels-last (equal to rounding, fewer passes over memory).

    `example`: a probe input (1, C, H, W) on the module's device. The copy does not follow later changes
    of `module`'s weights. Normalisation layers (LayerNorm, GroupNorm: autocast runs them in fp32, which
    needs fp32 parameters) and modules of the types `fp32_modules` (the metrics' logit head) keep fp32 weights.
    """
    if precision == "32" and not fold_fp32:
        return module
    net = fold_batchnorm(module, example).requires_grad_(False)
    net = net.to(dtype=_DTYPES.get(precision, torch.float32), memory_format=torch.channels_last)
    for m in net.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, *fp32_modules)):
            m.float()
    return net
