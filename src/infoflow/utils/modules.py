"""Small module mechanisms: freezing parameters, and keeping a network out of another's module tree."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Set ``requires_grad=False`` on all parameters of `module` within the block (no parameter gradients
    are built or accumulated); each parameter's flag is restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def hide_module(owner: nn.Module, name: str, module: nn.Module | Callable) -> None:
    """Make `module` (or any callable) the attribute `name` of `owner` without registering it as a submodule.

    Its parameters are then not in `owner`'s ``parameters()``, ``state_dict()`` or ``train()``/``eval()``
    switches, and optimisers and DDP do not see them. Mix in `MovesHidden` for ``.to()``/``.cuda()`` of
    `owner` to move it along.
    """
    owner.__dict__[name] = module
    hidden = owner.__dict__.setdefault("_hidden_modules", [])
    if name not in hidden:
        hidden.append(name)


class MovesHidden(nn.Module):
    """Mix-in: device and dtype moves (``_apply``) reach the modules attached with `hide_module`."""

    def _apply(self, fn: Callable, recurse: bool = True):  # type: ignore[override]  # noqa: ANN202
        for name in self.__dict__.get("_hidden_modules", ()):
            if isinstance(self.__dict__[name], nn.Module):
                self.__dict__[name]._apply(fn, recurse)
        return super()._apply(fn, recurse)
