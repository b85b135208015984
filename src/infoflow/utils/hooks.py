"""Capture the outputs of a network's modules with forward hooks, optionally ending the pass early."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from infoflow.errors import ConfigError

#: ``take(name, output) -> (kept, replacement)``: what to keep of a module's output, and what the network
#: continues with (None: the output itself)
Take = Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class StopForward(Exception):
    """Raised by a capture hook to end the forward pass once everything wanted is captured."""


class Captured(dict[str, torch.Tensor]):
    """name -> captured output, and `order`: the names in the order their modules ran."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []


def keep_output(_name: str, output: torch.Tensor) -> tuple[torch.Tensor, None]:
    return output, None


def keep_copy(_name: str, output: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Keep a copy, which later operations of the network cannot change."""
    return output.detach().clone(), None


@contextmanager
def capture_outputs(
    model: nn.Module,
    layers: Mapping[str, str] | Sequence[str],
    until: Collection[str] | bool = False,
    take: Take = keep_output,
) -> Iterator[Captured]:
    """Within the block, forward passes of `model` record the outputs of `layers` in the yielded dict.

    Args:
        layers: name -> module path; a sequence of module paths is taken as its own names.
        until: names after whose capture the pass stops (`StopForward` is raised in the last one's hook
            and swallowed by this context, so the rest of the ``with`` block is skipped); True means
            all of `layers`, False never stops.
        take: what is kept of each output and what the network continues with (see `Take`).

    Raises TypeError when a layer returns a non-tensor and ValueError when one runs twice in a pass.

    Example::

        with capture_outputs(net, ["features.17"], until=True) as out:
            net(x)
        feature = out["features.17"]
    """
    paths = dict(layers) if isinstance(layers, Mapping) else {p: p for p in layers}
    wanted = set(paths) if until is True else set(until or ())
    out = Captured()

    def hook(name: str) -> Callable[[nn.Module, object, object], torch.Tensor | None]:
        def fn(_m: nn.Module, _i: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            if name in out:
                raise ConfigError(f"layer {name!r} ({paths[name]}) runs more than once per forward pass")
            out.order.append(name)
            out[name], replacement = take(name, output)
            if wanted and wanted <= set(out):
                raise StopForward
            return replacement

        return fn

    handles = [model.get_submodule(path).register_forward_hook(hook(name)) for name, path in paths.items()]
    try:
        yield out
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
