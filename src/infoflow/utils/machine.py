"""The machine a measurement ran on, and its arithmetic floor.

`describe`: CPU model and its matrix units, threads, precision in one line; benchmarks print it first, so
that every figure the docs quote says where it came from. `conv_throughput`: the FLOP/s of a large
convolution, and `count_flops`: the FLOPs of a call, whose ratio is the floor a benchmark's wall time is
measured against.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from infoflow.utils.autotune import timed

#: /proc/cpuinfo flags worth naming: they decide the bf16 and int8 matrix throughput
_UNITS = {"amx_tile": "AMX", "avx512_bf16": "AVX-512 BF16", "avx512f": "AVX-512"}


def cpu_model() -> str:
    """The CPU's model name with its widest matrix/vector units, e.g. ``Intel(R) Xeon(R) Processor (AMX, AVX-512 BF16)``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    name, flags = "", set()
    for line in text.splitlines():
        if line.startswith("model name") and not name:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    units = [label for flag, label in _UNITS.items() if flag in flags]
    if "AVX-512 BF16" in units or "AMX" in units:
        units = [u for u in units if u != "AVX-512"]
    name = name or platform.processor() or "unknown CPU"
    return f"{name} ({', '.join(units)})" if units else name


def describe(precision: str, device: torch.device | str = "cpu") -> str:
    """``CPU: <model>  threads: <n>  precision: <p>`` (and the GPU's name on CUDA)."""
    device = torch.device(device)
    where = f"GPU: {torch.cuda.get_device_name(device)}  " if device.type == "cuda" else ""
    return f"{where}CPU: {cpu_model()}  threads: {torch.get_num_threads()}  precision: {precision}"


def conv_throughput(precision: str, device: torch.device | str = "cpu", repeats: int = 3, size: int = 28,
                    batch: int = 32) -> float:
    """FLOP/s of a channels-last 3x3 convolution 256 -> 256 channels, `size` x `size`, `batch` images (the
    machine's arithmetic floor for conv networks) in `precision` (a resolved precision); best of `repeats`."""
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "16-mixed" else torch.float32
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 256, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        best = timed(lambda _: conv(x), device, max(repeats, 3))(batch)
    return 2 * batch * 256 * 256 * 9 * size * size / best


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of `fn` (forward and backward), counted by `torch.utils.flop_counter.FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())
