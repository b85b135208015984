"""Fold eval-mode BatchNorm2d layers into the convolutions that feed them (inference / frozen networks).

With frozen statistics a batch norm is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with weights ``W * s`` and bias ``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``. This removes the
batch norms' forward and backward passes (a third of a ResNet's time in bf16 on a CPU). Pairs are found on
a probe pass (a batch norm whose input is exactly a convolution's output); the folded copy is checked
against the original on the probe, and the unfolded copy is returned if they differ. The folding itself is
PyTorch's (`torch.nn.utils.fusion.fuse_conv_bn_eval`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@torch.no_grad()
def fold_batchnorm(module: nn.Module, example: torch.Tensor, rtol: float = 1e-4) -> nn.Module:
    """An eval-mode copy of `module` with each BatchNorm2d folded into its convolution (module docstring).

    Args:
        example: a probe input (N, ...) for `module`, on its device.
        rtol: relative tolerance (on the output's norm) of the check against the original.
    """
    net = copy.deepcopy(module).eval()
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    calls: dict[nn.Module, int] = {}

    def on_conv(m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        calls[m] = calls.get(m, 0) + 1
        produced[id(out)] = (m, out)  # keeps `out` alive, so its id is not reused

    def on_bn(m: nn.Module, inputs: tuple) -> None:
        calls[m] = calls.get(m, 0) + 1
        found = produced.get(id(inputs[0]))
        if found is not None and found[1] is inputs[0]:
            pairs.append((found[0], m))

    hooks = [m.register_forward_hook(on_conv) for m in net.modules() if type(m) is nn.Conv2d]
    hooks += [m.register_forward_pre_hook(on_bn) for m in net.modules() if type(m) is nn.BatchNorm2d]
    try:
        reference = net(example)
    finally:
        for h in hooks:
            h.remove()
    parents = {child: (parent, name) for parent in net.modules() for name, child in parent.named_children()}
    for conv, bn in pairs:
        if calls[conv] != 1 or calls[bn] != 1 or bn.running_mean is None:
            continue
        conv_parent, conv_name = parents[conv]
        setattr(conv_parent, conv_name, fuse_conv_bn_eval(conv, bn))
        parent, name = parents[bn]
        setattr(parent, name, nn.Identity())
    folded = net(example)
    if (folded - reference).norm() > rtol * reference.norm() + 1e-6:
        return copy.deepcopy(module).eval()
    return net
