"""Throughput of the batched Degradation and Sensitivity-n metrics against a straightforward loop.

The reference loops below run one forward pass per image and perturbation step; the tests use them too.
Both run in the same process on the same inputs (a random-weight ShapesNet on 64x64 images), and the
results are compared. Sensitivity-n is timed as Table 1 uses it, for several attribution maps (methods) of
the same images: its perturbed forward passes do not depend on the map, so the batched path runs them once,
while the loop, per method, per image and per tile set, runs them for every method.
Quantus side by side (when installed): its ``RegionPerturbation`` (MoRF and LeRF, every tile, baseline value
0 on images centred per channel, so that infoflow's per-channel mean fill is the same value) against
infoflow's Degradation on the same maps, images and model; and infoflow's InsertionDeletion against a
straightforward per-image loop. Throughput is counted in model evaluations (perturbed images) per second,
so that methods doing different amounts of work compare fairly; the curves are compared too.
Precision: the batched Degradation and Sensitivity-n run once per ``--precisions`` value (fp32 and bf16 by
default) against the same fp32 loop; the bf16 lines give their ratio to the loop and the difference of the
area / correlations from the batched fp32 result (bound: 0.01; use ``--weights default``, the trained
shapesnet, for meaningful differences). ``--device cuda`` runs the batched paths and the loops there.
Usage: ``python benchmarks/bench_metrics.py [--threads 1] [--weights default] [--device cuda]``.
Last line: ``speedup: X`` (fp32 batched against the loop; ``best speedup`` adds the bf16 paths).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from infoflow.metrics import Degradation, InsertionDeletion, SensitivityN
from infoflow.metrics.degradation import degradation_curves
from infoflow.metrics.insertion_deletion import blurred
from infoflow.metrics.tiles import TileGrid
from infoflow.models import get_model

Forward = Callable[[torch.Tensor], torch.Tensor]


def _corners(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(0, height, tile) for c in range(0, width, tile)]


@torch.no_grad()
def degradation_loop(
    model: Forward,
    images: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
    tile_size: int,
    steps: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference degradation: MoRF (N, P) and LeRF (N, P) target probabilities after `steps` replaced tiles,
    and the top-1 probability (N,) on the original images; one forward pass per image and step."""
    corners = _corners(images.shape[2], images.shape[3], tile_size)
    morf, lerf, top1 = [], [], []
    for x, t, a in zip(images, target.tolist(), attributions, strict=True):
        tiles = [a[r : r + tile_size, c : c + tile_size].double() for r, c in corners]
        means = [t.sum().item() / t.numel() for t in tiles]
        mean = x.mean(dim=(1, 2), keepdim=True)
        for out, sign in ((morf, -1.0), (lerf, 1.0)):
            order = sorted(range(len(corners)), key=lambda k: sign * means[k])  # stable: ties by tile index
            image, removed, curve = x.clone(), 0, []
            for step in steps:
                for k in order[removed:step]:
                    r, c = corners[k]
                    image[:, r : r + tile_size, c : c + tile_size] = mean
                removed = step
                probs = torch.softmax(model(image[None]).double(), dim=1)[0]
                curve.append(probs[t].item())
                if step == 0 and sign < 0:
                    top1.append(probs.max().item())
            out.append(curve)
    return (
        torch.tensor(morf, dtype=torch.float64),
        torch.tensor(lerf, dtype=torch.float64),
        torch.tensor(top1, dtype=torch.float64),
    )


@torch.no_grad()
def sensitivity_loop(
    model: Forward,
    images: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
    tile_size: int,
    subsets: torch.Tensor,
) -> torch.Tensor:
    """Reference Sensitivity-n: per-image correlations (N, K) for tile sets `subsets` (K, S, num_tiles) bool;
    one forward pass per image and tile set; a constant series (relative range <= 1e-9) counts as 0."""
    corners = _corners(images.shape[2], images.shape[3], tile_size)
    result = []
    for x, t, a in zip(images, target.tolist(), attributions, strict=True):
        base = model(x[None]).double()[0, t].item()
        row = []
        for sets in subsets:
            masses, drops = [], []
            for tiles in sets:
                mask = torch.zeros(x.shape[1:], dtype=torch.bool, device=x.device)
                for k in tiles.nonzero().flatten().tolist():
                    r, c = corners[k]
                    mask[r : r + tile_size, c : c + tile_size] = True
                masses.append(a[mask].double().sum().item())
                drops.append(base - model(x.masked_fill(mask, 0)[None]).double()[0, t].item())
            constant = any(np.ptp(v) <= 1e-9 * np.abs(v).max() for v in (masses, drops))
            row.append(0.0 if constant else float(np.corrcoef(masses, drops)[0, 1]))
        result.append(row)
    return torch.tensor(result, dtype=torch.float64)


@torch.no_grad()
def insertion_deletion_loop(
    model: Forward,
    images: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
    steps: list[int],
    deletion_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference pixel insertion (into the blurred image) and deletion (to a constant) curves (N, P); one
    forward pass per image and step."""
    insertion, deletion = [], []
    start = blurred(images)
    for x, s, t, a in zip(images, start, target.tolist(), attributions, strict=True):
        order = sorted(range(a.numel()), key=lambda k: -a.flatten()[k].item())  # stable: ties by index
        for out, base, fill in ((insertion, s, x), (deletion, x, torch.full_like(x, deletion_value))):
            image, curve = base.clone().flatten(1), []
            for k in steps:
                changed = torch.tensor(order[:k], dtype=torch.long, device=x.device)
                image[:, changed] = fill.flatten(1)[:, changed]
                curve.append(torch.softmax(model(image.view_as(x)[None]).double(), dim=1)[0, t].item())
            out.append(curve)
    return torch.tensor(insertion, dtype=torch.float64), torch.tensor(deletion, dtype=torch.float64)


def quantus_side_by_side(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor,
                         attributions: torch.Tensor, tile: int, batch_size: int) -> float | None:
    """Quantus RegionPerturbation vs infoflow's Degradation (both orders, every tile); returns the ratio of
    model evaluations per second (infoflow / Quantus), None without Quantus."""
    if images.device.type != "cpu":
        print("quantus: runs on numpy arrays, side-by-side skipped off the CPU")
        return None
    try:
        import quantus
    except ImportError:
        print("quantus: not installed (pip install 'infoflow[quantus]'), side-by-side skipped")
        return None
    n, h, w = attributions.shape
    grid = TileGrid(h, w, tile)
    steps = torch.arange(grid.num_tiles + 1)
    x = images - images.mean(dim=(2, 3), keepdim=True)  # per-channel mean 0 = Quantus's baseline value 0.0
    (curves, _), t_ours = _timed(lambda: degradation_curves(model, x, target, attributions, grid, steps, batch_size))
    evals_ours = n * (2 + 2 * (grid.num_tiles - 1))  # original and constant image once, inner steps per order

    def run_quantus() -> list[np.ndarray]:
        out = []
        for order in ("morf", "lerf"):
            metric = quantus.RegionPerturbation(patch_size=tile, order=order, regions_evaluation=grid.num_tiles,
                                                perturb_baseline=0.0, disable_warnings=True, display_progressbar=False)
            out.append(np.array(metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                                       a_batch=attributions[:, None].numpy(), softmax=True, batch_size=batch_size)))
        return out

    theirs, t_quantus = _timed(run_quantus)
    evals_quantus = 2 * n * (1 + grid.num_tiles)  # per order: the original and every tile count
    diff = max(float(np.abs(theirs[k] - (curves[k][:, :1] - curves[k][:, 1:]).numpy()).max()) for k in range(2))
    ratio = (evals_ours / t_ours) / (evals_quantus / t_quantus)
    print(f"degradation vs quantus.RegionPerturbation: {n} images, {grid.num_tiles} tiles, both orders: "
          f"infoflow {evals_ours / t_ours:.0f} evals/s ({n / t_ours:.2f} img/s), quantus "
          f"{evals_quantus / t_quantus:.0f} evals/s ({n / t_quantus:.2f} img/s); per-image ratio "
          f"{t_quantus / t_ours:.2f}, per-evaluation ratio {ratio:.2f}, max abs curve diff {diff:.1e}")
    return t_quantus / t_ours


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--degradation-images", type=int, default=12)
    parser.add_argument("--sensitivity-images", type=int, default=1)
    parser.add_argument("--methods", type=int, default=8, help="attribution maps per image for Sensitivity-n")
    parser.add_argument("--tile-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--insertion-images", type=int, default=2)
    parser.add_argument("--quantus-images", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16"])
    parser.add_argument("--weights", default="none", help="shapesnet weights (default: the trained ones)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly: under load, "
                        "more threads can run slower)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = get_model("shapesnet", args.weights).module.eval().to(device)
    n = max(args.degradation_images, args.sensitivity_images, args.insertion_images, args.quantus_images)
    images = torch.randn(n, 3, 64, 64).to(device)
    attributions = torch.randn(n, 64, 64).to(device)
    with torch.no_grad():
        target = model(images).argmax(1)
        model(images[:1])  # warm-up
    print(
        f"shapesnet (weights={args.weights}), 64x64 images, {device}, {args.tile_size}x{args.tile_size} tiles, "
        f"{torch.get_num_threads()} threads, batch size {args.batch_size}"
    )

    ratios = []
    nd = args.degradation_images
    deg = Degradation(model, (64, 64), args.tile_size, batch_size=args.batch_size)
    Degradation(model, (64, 64), args.tile_size, batch_size=args.batch_size).update(  # warm-up (full batches)
        images[:1], target[:1], attributions[:1])
    _, t_batched = _timed(lambda: deg.update(images[:nd], target[:nd], attributions[:nd]))
    (morf, lerf, top1), t_loop = _timed(
        lambda: degradation_loop(
            model, images[:nd], target[:nd], attributions[:nd], args.tile_size, deg.steps.tolist()
        )
    )
    diff = max(
        (deg.morf_sum - morf.sum(0)).abs().max().item(),
        (deg.lerf_sum - lerf.sum(0)).abs().max().item(),
        (deg.top1_sum - top1.sum()).abs().item(),
    )
    forwards = nd * 2 * len(deg.steps)
    print(
        f"degradation: {nd} images, {forwards} perturbations: batched {nd / t_batched:.2f} img/s, "
        f"loop {nd / t_loop:.2f} img/s, ratio {t_loop / t_batched:.2f}, max abs diff of the sums {diff:.2e}"
    )
    ratios.append(t_loop / t_batched)
    best = {"degradation": [t_loop / t_batched], "sensitivity-n": []}
    for precision in [p for p in args.precisions if p not in ("32", 32)]:
        low = Degradation(model, (64, 64), args.tile_size, batch_size=args.batch_size, precision=precision)
        low.update(images[:1], target[:1], attributions[:1])  # warm-up
        low.reset()
        _, t_low = _timed(lambda low=low: low.update(images[:nd], target[:nd], attributions[:nd]))
        area = float((low.compute().score - deg.compute().score).abs())
        print(f"degradation {low.precision}: batched {nd / t_low:.2f} img/s, ratio to the loop {t_loop / t_low:.2f}, "
              f"|area - fp32 area| {area:.4f} (fp32 area {float(deg.compute().score):.4f})")
        best["degradation"].append(t_loop / t_low)

    ns, m = args.sensitivity_images, args.methods
    maps = torch.randn(m, ns, 64, 64)
    sens = SensitivityN(model, (64, 64), args.tile_size, batch_size=args.batch_size)
    metrics = [SensitivityN(model, (64, 64), args.tile_size, batch_size=args.batch_size) for _ in range(m)]
    _, t_single = _timed(lambda: sens.update(images[:ns], target[:ns], maps[0]))

    def batched_methods() -> None:  # as Table 1 does it: the drops once, then every method's masses
        drops = metrics[0].drops(images[:ns], target[:ns])
        for metric, a in zip(metrics, maps, strict=True):
            metric.update(images[:ns], target[:ns], a, drops=drops)

    _, t_batched = _timed(batched_methods)
    corrs, t_loop = _timed(lambda: [
        sensitivity_loop(model, images[:ns], target[:ns], a, args.tile_size, sens.subsets) for a in maps
    ])
    diff = max((metric.corr_sum - corr.sum(0)).abs().max().item() for metric, corr in zip(metrics, corrs, strict=True))
    diff = max(diff, (sens.corr_sum - corrs[0].sum(0)).abs().max().item())
    forwards = ns * sens.subsets.shape[0] * sens.subsets.shape[1]
    t_loop_single = t_loop / m
    print(
        f"sensitivity-n, 1 map per image: {ns} images, {forwards} perturbations: batched {ns / t_single:.3f} img/s, "
        f"loop {ns / t_loop_single:.3f} img/s, ratio {t_loop_single / t_single:.2f}"
    )
    print(
        f"sensitivity-n, {m} maps per image (methods, as in Table 1): batched {ns * m / t_batched:.3f} maps/s, "
        f"loop {ns * m / t_loop:.3f} maps/s, ratio {t_loop / t_batched:.2f}, max abs diff of the sums {diff:.2e}"
    )
    ratios.append(t_loop / t_batched)
    best["sensitivity-n"].append(t_loop / t_batched)
    for precision in [p for p in args.precisions if p not in ("32", 32)]:
        lows = [SensitivityN(model, (64, 64), args.tile_size, batch_size=args.batch_size, precision=precision)
                for _ in range(m)]

        def batched_low(lows: list[SensitivityN] = lows) -> None:
            drops = lows[0].drops(images[:ns], target[:ns])
            for metric, a in zip(lows, maps, strict=True):
                metric.update(images[:ns], target[:ns], a, drops=drops)

        _, t_low = _timed(batched_low)
        corr = max(float((a.compute().correlation - b.compute().correlation).abs().max())
                   for a, b in zip(lows, metrics, strict=True))
        print(f"sensitivity-n {lows[0].precision}, {m} maps per image: batched {ns * m / t_low:.3f} maps/s, ratio to "
              f"the loop {t_loop / t_low:.2f}, max |correlation - fp32| {corr:.4f}")
        best["sensitivity-n"].append(t_loop / t_low)
    ni = args.insertion_images
    insdel = InsertionDeletion(model, (64, 64), tile_size=1, batch_size=args.batch_size)
    _, t_batched = _timed(lambda: insdel.update(images[:ni], target[:ni], attributions[:ni]))
    (ins, dele), t_loop = _timed(lambda: insertion_deletion_loop(
        model, images[:ni], target[:ni], attributions[:ni], insdel.steps.tolist()))
    diff = max((insdel.insertion_sum - ins.sum(0)).abs().max().item(),
               (insdel.deletion_sum - dele.sum(0)).abs().max().item())
    evals = ni * 2 * len(insdel.steps)
    print(f"insertion/deletion (pixels, {len(insdel.steps)} points): {ni} images, {evals} evaluations: batched "
          f"{evals / t_batched:.0f} evals/s, loop {evals / t_loop:.0f} evals/s, ratio {t_loop / t_batched:.2f}, "
          f"max abs diff of the sums {diff:.2e}")
    ratios.append(t_loop / t_batched)

    nq = args.quantus_images
    quantus_ratio = quantus_side_by_side(model, images[:nq], target[:nq], attributions[:nq], args.tile_size,
                                         args.batch_size)
    if quantus_ratio is not None:
        print(f"quantus ratio: {quantus_ratio:.2f}")
    print("best speedup over the loop, any precision: " + ", ".join(f"{k} {max(v):.2f}" for k, v in best.items()))
    print(f"speedup: {min(ratios):.2f}")
    return min(ratios)


if __name__ == "__main__":
    main()
