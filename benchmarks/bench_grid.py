"""The batched (layer, beta) grid against a loop of single-beta Per-Sample fits: equal maps, speed ratio.

For one layer: ``PerSampleIBA.explain_grid`` (all betas of an image in one batched pass, the head once per
image) against one ``explain`` call per beta, with the same noise. Prints the CPU model, thread count and
precision, both times (best of ``--repeats``) measured side by side, their ratio, each as a multiple of the
arithmetic floor (the grid's FLOPs over the measured throughput of a large convolution, see
`infoflow.utils.machine`), and the max abs difference of the heatmaps (must be rounding only).

    python benchmarks/bench_grid.py [--model resnet50 --layer conv3_4 --image-size 224] [--images 2]
        [--betas 0.1 1 10 100 1000] [--steps 10 --copies 10] [--batch-size 8] [--precision 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from infoflow.iba.per_sample import PerSampleIBA
from infoflow.models import get_model
from infoflow.utils.machine import conv_throughput, count_flops, describe


def best(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapesnet")
    p.add_argument("--layer", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--betas", type=float, nargs="+", default=[0.1, 1, 10, 100, 1000])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", default="32")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    kwargs = {"num_classes": 10} if a.model != "shapesnet" else {}
    if a.image_size:
        kwargs["input_size"] = (3, a.image_size, a.image_size)
    model = get_model(a.model, **kwargs)
    layer = a.layer or {"shapesnet": "conv3", "resnet50": "conv3_4"}.get(a.model, "conv3")
    x = torch.randn(a.images, *model.input_size)
    iba = PerSampleIBA(model, layer, steps=a.steps, copies=a.copies, batch_size=a.batch_size, seed=0,
                       estimator_samples=16, precision=a.precision)
    iba.fit([{"image": torch.randn(8, *model.input_size)} for _ in range(2)])
    target = torch.zeros(a.images, dtype=torch.long)

    def loop() -> torch.Tensor:
        maps = []
        for beta in a.betas:
            iba.beta = beta
            maps.append(iba.explain(x, target).heatmap)
        return torch.stack(maps, 1)

    t_grid, grid = best(lambda: iba.explain_grid(x, target, a.betas).heatmap, a.repeats)
    t_loop, ref = best(loop, a.repeats)
    floor = count_flops(lambda: iba.explain_grid(x, target, a.betas)) / conv_throughput(iba.precision)
    print(f"{describe(iba.precision)}  "
          f"model: {a.model}/{layer}  input: {tuple(model.input_size)}  images: {a.images}  betas: {len(a.betas)}  "
          f"steps x copies: {a.steps} x {a.copies}  batch_size: {a.batch_size}")
    print(f"grid (batched): {t_grid:.3f} s   loop of single-beta fits: {t_loop:.3f} s   "
          f"loop / grid = {t_loop / t_grid:.2f}x")
    print(f"floor (FLOPs / conv throughput): {floor:.3f} s; grid {t_grid / floor:.2f}x the floor, "
          f"loop {t_loop / floor:.2f}x")
    print(f"max |grid - loop| = {float((grid - ref).abs().max()):.3g} bits/pixel (max map {float(ref.max()):.3g})")


if __name__ == "__main__":
    main()
