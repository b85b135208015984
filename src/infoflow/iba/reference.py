"""A faithful re-implementation of the reference library's Per-Sample loop, for validation and benchmarks.

It does what the original IBA library does: one image per call, the whole network from the input at
every step (a forward hook replaces the layer's output by the noisy one), the image repeated `copies`
times per step, and the classifier's weights left trainable, so their gradients are computed and thrown
away. Given the same noise it gives the same heatmap as `PerSampleIBA`, only slower.

It keeps no tensor across a forward pass: the layer's output is recomputed from the input at every step and
the hook returns a new tensor, so in-place modules after the layer (which it leaves as they are) can
change nothing it uses. That makes it an independent check of the fast path's cached-feature handling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infoflow.iba.bottleneck import Bottleneck, capacity_to_heatmap
from infoflow.iba.per_sample import draw_noise


def naive_per_sample(
    model: torch.nn.Module,
    layer: str,
    bottleneck: Bottleneck,
    image: torch.Tensor,
    target: int,
    beta: float = 10.0,
    steps: int = 10,
    lr: float = 1.0,
    copies: int = 10,
    init_alpha: float = 5.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Heatmap (H, W) in bits/pixel for one image (1, C, H, W), the reference library's way."""
    module = model.get_submodule(layer)
    state: dict[str, torch.Tensor] = {}

    def restrict(_m: torch.nn.Module, _i: object, r: torch.Tensor) -> torch.Tensor:
        if "alpha" not in state:
            state["alpha"] = torch.full_like(r[:1], init_alpha, requires_grad=True)
            state["optimizer"] = torch.optim.Adam([state["alpha"]], lr=lr)  # type: ignore[assignment]
        lam = bottleneck.lam(state["alpha"]).expand_as(r)
        state["capacity"] = bottleneck.capacity(r, lam)
        noise = draw_noise((1, copies, *r.shape[1:]), [generator] if generator else None, r.device)[0]
        return bottleneck.inject(r, lam, noise)

    handle = module.register_forward_hook(restrict)
    try:
        batch = image.expand(copies, -1, -1, -1)
        labels = torch.full((copies,), target, dtype=torch.long, device=image.device)
        for _ in range(steps):
            logits = model(batch)  # the first pass also creates alpha and its optimiser in the hook
            optimizer: torch.optim.Optimizer = state["optimizer"]  # type: ignore[assignment]
            optimizer.zero_grad()
            loss = F.cross_entropy(logits, labels) + beta * state["capacity"].mean()
            loss.backward()
            optimizer.step()
    finally:
        handle.remove()
    return capacity_to_heatmap(state["capacity"].detach().mean(0, keepdim=True), tuple(image.shape[-2:]))[0]
