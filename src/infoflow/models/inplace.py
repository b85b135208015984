"""No module of an analysed network may write into its input: ``inplace`` is switched off.

Per-Sample IBA, the Readout Bottleneck, SID/RU, the metrics' perturbation passes and the baselines' hooks
keep a layer's output and hand it (or the network's input) on to the rest of the network. A module that
works in place, such as torchvision VGG's and AlexNet's ``ReLU(inplace=True)`` right after a conv layer,
would then overwrite the kept tensor: Per-Sample IBA, for instance, would inject noise into the rectified
feature while its statistics describe the conv output. Every module with an ``inplace`` flag (ReLU, ReLU6,
Hardtanh, LeakyReLU, ELU, SiLU, Dropout, ...) is therefore switched to ``inplace=False`` when the zoo builds
a model and when a `SplitModel` is made of any network; the outputs are bitwise the same, only a few
activations more are allocated. In-place *functional* calls inside a ``forward`` (``F.relu(x, inplace=True)``,
``x.relu_()``) are not covered: the zoo's networks have none.
"""

from __future__ import annotations

from torch import nn


def disable_inplace(module: nn.Module) -> list[str]:
    """Set ``inplace=False`` on every submodule of `module` that has the flag; returns the paths changed."""
    changed = []
    for path, m in module.named_modules():
        if getattr(m, "inplace", None) is True:
            m.inplace = False
            changed.append(path)
    return changed
