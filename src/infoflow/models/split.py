"""Split a network at a layer into a head (input -> layer output) and a tail (layer output -> logits).

The split uses torch.fx: the layer is traced as a leaf, the graph is cut at its output, and the tail is
a graph module that starts from that output, so work after a bottleneck runs on cached features.
Networks that cannot be traced, or whose graph has connections that cross the cut (a skip connection
around the layer), fall back to forward hooks on the full network: the head stops the forward pass at
the layer, the tail reruns the network and substitutes the layer's output. Both give the same results.

The network's in-place modules are switched off (`disable_inplace`), so `tail(feature)` never changes
`feature`: methods run the tail many times on one cached feature.
"""

from __future__ import annotations

import warnings

import torch
import torch.fx as fx
from torch import nn

from infoflow.models.inplace import disable_inplace
from infoflow.utils.hooks import capture_outputs


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(m, qualname)


class SplitModel(nn.Module):
    """`head(x)` gives the output of `layer`; `tail(feature, x)` continues from it to the logits.

    `tail` needs the input `x` (with the same batch size as `feature`) only when the hook fallback
    is in use; then `needs_input` is True. A network whose every cut is crossed by another connection
    (a ViT's class token: `infoflow.models.tokens`) says so with a class attribute ``fx_split = False``
    and gets the hook split without a torch.fx attempt. The in-place modules of `model` are
    switched off for good (same outputs; see `infoflow.models.inplace`).
    """

    def __init__(self, model: nn.Module, layer: str, use_fx: bool = True) -> None:
        super().__init__()
        disable_inplace(model)
        self.model = model
        self.layer = layer
        self.layer_module = model.get_submodule(layer)
        self._head: nn.Module | None = None
        self._tail: nn.Module | None = None
        if use_fx and getattr(model, "fx_split", True):
            try:
                self._head, self._tail = _fx_split(model, layer)
            except Exception as err:  # untraceable model or a cut crossed by other connections
                warnings.warn(f"torch.fx split at {layer!r} failed ({err}); using forward hooks", stacklevel=2)

    @property
    def needs_input(self) -> bool:
        return self._tail is None

    def head(self, x: torch.Tensor) -> torch.Tensor:
        if self._head is not None:
            return self._head(x)
        with capture_outputs(self.model, [self.layer], until=True) as out:
            self.model(x)
        return out[self.layer]

    def tail(self, feature: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if self._tail is not None:
            return self._tail(feature)
        if x is None or x.shape[0] != feature.shape[0]:
            raise ValueError("the hook-based tail needs the input x with the feature's batch size")
        handle = self.layer_module.register_forward_hook(lambda _m, _i, _o: feature)
        try:
            return self.model(x)
        finally:
            handle.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(x), x)


def _fx_split(model: nn.Module, layer: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    graph = _LeafTracer(layer).trace(model)
    nodes = list(graph.nodes)
    cuts = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
    if len(cuts) != 1:
        raise ValueError(f"layer {layer!r} is called {len(cuts)} times in the traced graph")
    cut = cuts[0]
    before = set(nodes[: cut + 1])

    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: cut + 1]:
        env[node] = head.node_copy(node, lambda n: env[n])
    head.output(env[nodes[cut]])

    tail = fx.Graph()
    env = {nodes[cut]: tail.placeholder("feature")}

    def arg(n: fx.Node) -> fx.Node:
        if n in env:
            return env[n]
        if n in before and n.op == "get_attr":
            env[n] = tail.node_copy(n, arg)
            return env[n]
        raise ValueError(f"node {n.name} before the cut is used after it (e.g. a skip connection)")

    for node in nodes[cut + 1 :]:
        env[node] = tail.node_copy(node, arg)
    return _module(model, head, "Head"), _module(model, tail, "Tail")


def _module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    gm = fx.GraphModule(root, graph, name)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm
