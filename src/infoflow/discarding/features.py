"""Features of several layers from one forward pass, for inputs in the [0, 1] pixel space.

`LayerFeatures` registers forward hooks on every requested layer, normalises [0, 1] images with the
datamodule's mean/std, runs the network once and stops right after the deepest requested layer.

Batching over layers (``groups``): the batch may be sorted by layer, the first ``groups[0]`` rows
belonging to the shallowest layer, the next ``groups[1]`` rows to the next, and so on. Each layer's
rows are then the only ones returned for it. For chain-like networks (every layer's output is the
only path to the deeper ones, as in VGG, AlexNet, the ResNet block sequence, ShapesNet) the rows of a
layer are also dropped from the batch right after that layer, so each row is computed exactly up to
its own layer ("pruning"). Whether pruning is valid for a network is checked once on a probe batch
(same features with and without it); otherwise all rows run up to the deepest layer.

Features are the hooked modules' outputs, copied (``clone``) so that nothing later in the network can
change them (zoo models have no in-place modules anyway, see `infoflow.models.inplace`): for VGG/AlexNet the zoo's ``convS_I`` is the
conv output before its ReLU; for ResNets a block output (after its ReLU); for ShapesNet a conv-BN-ReLU
block output. The network must be in eval mode (rows must not interact through BatchNorm statistics);
`LayerFeatures` switches it to eval while in use.

Precision (``precision``, `infoflow.utils.precision`): with ``bf16`` the network's forward (and, in SID,
its backward) runs under autocast and every captured feature is returned as fp32, so all that is computed
from the features (SID's ||h(x') - f||² and constraint ratio, RU's reconstructions) is fp32. The check that
pruning is valid always runs in fp32 (a structural property, compared at a 1e-4 tolerance).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import accumulate

import torch
from torch import nn

from infoflow.models.zoo import ZooModel
from infoflow.utils.cache import tensor_fingerprint as model_fingerprint  # noqa: F401  (cache keys: utils.cache)
from infoflow.utils.hooks import capture_outputs
from infoflow.utils.precision import autocast, resolve_precision, to_fp32


def _copy(o: torch.Tensor) -> torch.Tensor:
    """An fp32 copy of a captured feature (a reduced-precision one is converted, which copies it)."""
    low = to_fp32(o)
    return low if low is not o else o.clone()


class _PruneMismatch(Exception):
    """A layer saw a batch size other than the rows still expected: pruning is invalid here."""


def resolve_layers(model: ZooModel, layers: Sequence[str] | None = None) -> dict[str, str]:
    """Paper layer names (or module paths) -> module paths; all conv layers when `layers` is None.

    Unknown names raise the zoo's ValueError listing the valid layers.
    """
    names = list(model.conv_layers() if layers is None else layers)
    if not names:
        raise ValueError(f"no layers selected for model {model.name!r}")
    return {name: model.layer_path(name) for name in names}


def noise_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded by a SHA-256 hash of `key` (e.g. seed, image index, layer, stream).

    Hashing gives well-separated 63-bit seeds; small raw seeds are avoided because the first normals of
    some (seed 0 in particular) are far from i.i.d. in quadratic statistics.
    """
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class LayerFeatures(nn.Module):
    """Capture the outputs of `layers` of `model` for [0, 1] images in one forward pass.

    Args:
        model: the network (images normalised with `mean`/`std` -> logits).
        layers: name -> module path (e.g. from `resolve_layers`); a sequence of module paths is taken
            as its own names. Several names may not share one module.
        mean, std: per-channel normalisation the network expects; inputs are ``(x - mean) / std``.
        prune: allow dropping finished rows (see the module docstring); it is still verified once.
        precision: ``32`` | ``bf16`` | ``16-mixed`` for the network pass (module docstring); the attribute
            `precision` holds the resolved value and may be changed later.

    Attributes:
        order: layer names in the order their modules run (known after the first call).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, str] | Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        prune: bool = True,
        precision: str | int = 32,
    ) -> None:
        super().__init__()
        self.model = model
        first = next(model.parameters(), None)
        self.precision = resolve_precision(precision, first.device if first is not None else None)
        self.paths = dict(layers) if isinstance(layers, Mapping) else {p: p for p in layers}
        if len(set(self.paths.values())) != len(self.paths):
            raise ValueError(f"several layer names share a module: {self.paths}")
        for name, path in self.paths.items():
            try:
                model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"layer {name!r}: model has no module {path!r}") from None
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.order: list[str] = []
        self.prune = prune
        self._verified = False

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised -> [0, 1] pixel space (no clamping, so it inverts `normalize` exactly)."""
        return x * self.std + self.mean

    @contextmanager
    def _eval(self) -> Iterator[None]:
        was = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was)

    def _run(
        self, x01: torch.Tensor, groups: Sequence[int] | None, prune: bool, precision: str | None = None
    ) -> dict[str, torch.Tensor]:
        """One hooked forward. Without `groups` every layer gets every row and `self.order` is recorded.
        `precision`: of this pass (default: `self.precision`); the features returned are fp32 copies."""
        counts = dict(zip(self.order, groups, strict=True)) if groups is not None else {}
        starts = dict(zip(counts, accumulate([0, *counts.values()]), strict=False))
        wanted = set(self.paths) if groups is None else {n for n, g in counts.items() if g > 0}
        remaining = [x01.shape[0]]  # rows still in the batch when pruning

        def take(name: str, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            if groups is None:
                return _copy(o), None
            if not prune:
                return _copy(o[starts[name] : starts[name] + counts[name]]), None
            if o.shape[0] != remaining[0]:
                raise _PruneMismatch(name)
            k = counts[name]
            remaining[0] -= k
            return _copy(o[:k]), o[k:]

        with capture_outputs(self.model, self.paths, until=wanted, take=take) as out, \
                autocast(self.precision if precision is None else precision, x01.device):
            self.model(self.normalize(x01))
        missing = wanted - set(out)
        if missing:
            raise ValueError(f"layers {sorted(missing)} did not run in the forward pass")
        if groups is None:
            self.order = out.order
        return dict(out)

    def _verify(self, x01: torch.Tensor) -> None:
        """Record the layer order on one image, then check that pruning gives the same features."""
        one = x01[:1]
        with torch.no_grad():
            full = self._run(one, None, prune=False, precision="32")
            if self.prune and len(self.order) > 1:
                try:
                    pruned = self._run(
                        one.expand(len(self.order), *one.shape[1:]), [1] * len(self.order), True, "32"
                    )
                    self.prune = all(
                        (pruned[n] - full[n]).norm() <= 1e-4 * full[n].norm() + 1e-6 for n in self.order
                    )
                except (_PruneMismatch, RuntimeError):
                    self.prune = False
        self._verified = True

    def probe(self, x01: torch.Tensor) -> list[str]:
        """Record `order` (and check pruning) on the first image of `x01` unless done; return `order`."""
        if not self._verified:
            with self._eval():
                self._verify(x01)
        return self.order

    def forward(self, x01: torch.Tensor, groups: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Features of the images `x01` (N, C, H, W) in [0, 1].

        Args:
            groups: rows per layer, in `self.order`, summing to N (rows sorted by layer); None gives
                every layer's feature of every row.
        Returns:
            name -> feature (rows of that layer only when `groups` is given).
        """
        self.probe(x01)
        with self._eval():
            if groups is None:
                return self._run(x01, None, prune=False)
            groups = [int(g) for g in groups]
            if len(groups) != len(self.order) or sum(groups) != x01.shape[0] or min(groups) < 0:
                raise ValueError(
                    f"groups {groups} must give rows per layer {self.order}, summing to {x01.shape[0]}"
                )
            return self._run(x01, groups, self.prune)
