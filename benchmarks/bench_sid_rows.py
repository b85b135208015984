"""SID's cost in rows: the rows it forwards, its wall time over the row floor, and the fresh constraint ratios.

For the default shapesnet (trained default weights) on shapes test images, at the ``analysis=layerwise``
setting and at a study's (the ``layerwise`` stage of ``experiment=distillation_shapes``, read from the
configs, so the benchmark follows them). Every row SID forwards is counted per layer, with and without
gradients (rows are dropped after their layer, so a row's cost depends on it). The floor is
``sum over (layer, grad) of rows x the measured cost of one row`` (the same network, `max_rows` rows per pass,
best of 3, at SID's own `max_rows`, resolved first where it is ``auto``), so the ratio wall / floor is what batching, Python and the optimiser's bookkeeping add; fewer
rows, not faster rows, is the lever where it is near 1. The fresh ratio is rho = E||h(x') - f||² /
(alpha delta_f²) re-estimated on draws SID's projection never saw: it should be 1 within tol. Last, the cost
of one row at the deepest layer for several rows per pass (``--rows``), with and without gradients, relative
to `max_rows`: how much a different chunk size could save.

    python benchmarks/bench_sid_rows.py [--settings default study] [--images 4] [--precision 32]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf

from infoflow.data.shapes import ShapesDataModule
from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2, resolve_layers
from infoflow.discarding.sid import resolve_max_rows
from infoflow.models.zoo import get_model
from infoflow.utils.machine import describe
from infoflow.utils.precision import resolve_precision

CONF = Path(__file__).resolve().parents[1] / "conf"
SID_FIELDS = ("steps", "lr", "samples", "eval_samples", "max_eval_samples", "tol", "target_se", "fresh_rounds",
              "max_rows")


def setting(name: str) -> tuple[SIDConfig, list[str] | None]:
    """The SIDConfig and layers of ``analysis=layerwise`` (``default``) or of a study's layerwise stage."""
    analysis = OmegaConf.load(CONF / "analysis" / "layerwise.yaml")
    sid = {k: analysis.sid[k] for k in SID_FIELDS}
    layers = None
    if name == "study":
        stage = OmegaConf.load(CONF / "experiment" / "distillation_shapes.yaml").task.stages.layerwise.overrides
        sid.update({k.removeprefix("analysis.sid."): v for k, v in stage.items() if k.startswith("analysis.sid.")})
        layers = list(stage["analysis.layers"])
    return SIDConfig(**sid), layers


@contextmanager
def counting(features: LayerFeatures) -> Iterator[dict[tuple[str, bool], int]]:
    """Count the rows each layer receives in `features`' grouped passes, keyed by (layer, with gradients)."""
    rows: dict[tuple[str, bool], int] = defaultdict(int)
    forward = features.forward

    def counted(x01: torch.Tensor, groups=None):  # noqa: ANN001, ANN202
        if groups is not None:
            grad = torch.is_grad_enabled() and x01.requires_grad
            for name, g in zip(features.order, groups, strict=True):
                rows[(name, grad)] += int(g)
        return forward(x01, groups)

    features.forward = counted  # type: ignore[method-assign]
    try:
        yield rows
    finally:
        del features.forward


def row_cost(features: LayerFeatures, x01: torch.Tensor, layer: str, grad: bool, rows: int) -> float:
    """Seconds per row of a grouped pass of `rows` noisy copies that stops at `layer` (with the input
    gradient when `grad`, as SID's steps take it); best of 3 after a warm-up."""
    groups = [rows if name == layer else 0 for name in features.order]
    x = (x01[:1] + 0.01 * torch.randn(rows, *x01.shape[1:])).requires_grad_(grad)
    best = float("inf")
    for i in range(4):
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = features(x, groups=groups)[layer]
            if grad:
                torch.autograd.grad(out.pow(2).sum(), [x])
        if i:
            best = min(best, time.perf_counter() - start)
    return best / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["default", "study"], choices=["default", "study"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--precision", default="32")
    parser.add_argument("--rows", type=int, nargs="*", default=[32, 64, 128, 256, 512, 1024],
                        help="rows per pass to time at the deepest layer (the max_rows choice)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    dm = ShapesDataModule(num_classes=4, num_test=32)
    dm.setup("test")
    images01 = dm.denormalize(next(iter(dm.test_dataloader()))["image"])
    model = get_model("shapesnet", "default", num_classes=4, input_size=dm.input_size)
    precision = resolve_precision(args.precision, "cpu")
    print(describe(precision))
    for name in args.settings:
        cfg, layers = setting(name)
        paths = resolve_layers(model, layers)
        features = LayerFeatures(model.module, paths, dm.mean, dm.std)
        features(images01[:1])  # records the layer order
        df2 = estimate_delta_f2(features, images01[:16], tau=1e-3, samples=16)
        features.precision = precision
        x01 = images01[: args.images]
        cfg = resolve_max_rows(features, x01, list(paths), cfg)  # auto: measured (or cached) outside the timing
        with counting(features) as rows:
            start = time.perf_counter()
            sid = compute_sid(features, x01, df2, cfg)
            wall = time.perf_counter() - start
        per_row = {key: row_cost(features, x01, *key, cfg.max_rows) for key in rows}
        floor = sum(n * per_row[key] for key, n in rows.items())
        grad_rows = sum(n for (_, g), n in rows.items() if g)
        print(f"\n{name}: {args.images} images x layers {sid.layers}; steps {cfg.steps} x {cfg.samples} draws, "
              f"eval_samples {cfg.eval_samples}, max_eval_samples {cfg.max_eval_samples}, tol {cfg.tol}, "
              f"max_rows {cfg.max_rows}")
        print("| layer | rows with gradients | rows without | fresh ratio: mean (min-max) | projection draws (mean) |")
        print("|---|---|---|---|---|")
        for j, layer in enumerate(sid.layers):
            fresh = sid.ratio_fresh[:, j]
            print(f"| {layer} | {rows.get((layer, True), 0):,} | {rows.get((layer, False), 0):,} | "
                  f"{fresh.mean():.3f} ({fresh.min():.3f}-{fresh.max():.3f}) | {sid.draws[:, j].mean():.0f} |")
        print(f"rows: {grad_rows:,} with gradients, {sum(rows.values()) - grad_rows:,} without; "
              f"wall {wall:.2f} s, row floor {floor:.2f} s: {wall / floor:.2f}x the floor; "
              f"{int(sid.converged.sum())}/{sid.converged.numel()} (image, layer) pairs within tol on fresh draws")
    if args.rows:
        deepest = features.order[-1]
        print(f"\nseconds per row at {deepest} by rows per pass (relative to max_rows={cfg.max_rows}):")
        for grad in (True, False):
            costs = {r: row_cost(features, x01, deepest, grad, r) for r in sorted({*args.rows, cfg.max_rows})}
            ref = costs[cfg.max_rows]
            print(f"  {'with' if grad else 'without'} gradients: " + ", ".join(
                f"{r}: {c * 1e6:.0f} us ({c / ref:.2f}x)" for r, c in costs.items()))


if __name__ == "__main__":
    main()
