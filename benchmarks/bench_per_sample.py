"""Per-Sample Bottleneck: infoflow's fast path in fp32 and bf16 against the reference library's loop (fp32).

Default: ResNet-50 at conv3_4 (torchvision `layer2`); ``--model vgg16 --layer conv4_1`` checks a network
with an in-place ReLU right after the layer; ``--model vit_b_16 --layer block6`` a ViT's token map (its
class token crosses the cut, so infoflow's tail reruns the network too, with the hook split; torchvision's
zero-initialised ViT classifier is given random weights, else every gradient would vanish). 224x224 random
inputs, random weights and statistics from random images by default; ``--data shapes --weights default``
uses a network trained on the built-in data (e.g. ``--model resnet18 --image-size 128``) with shapes test
images, their labels and statistics from shapes training images, which is where the bf16 fidelity counts. The naive reference is done the way the reference library does it:
one image per call, the full network from the input at every step (a forward hook replaces the layer's
output), weights not frozen, and the network's ReLUs in place as torchvision builds them. All use the same
noise, so the fp32 heatmaps must agree with the reference up to floating-point rounding, and the bf16 ones
up to bf16 rounding; the script prints, for each precision, heatmaps/s, the speed-up over the reference,
the max abs difference and the min Pearson correlation against the fp32 reference. Every timing is the
best of ``--repeats`` runs (the machine may be shared). ``--compile`` also times ``torch.compile`` of the
tail.

    python benchmarks/bench_per_sample.py [--model vgg16 --layer conv4_1] [--images 4] [--naive-images 2]
        [--steps 10 --copies 10] [--precisions 32 bf16] [--device cuda] [--repeats 2] [--compile]
        [--data shapes --weights default --image-size 128] [--batch-sizes auto 1 2 4 8]

It also measures the machine's floor: the FLOP/s of a channels-last 3x3 convolution 256 -> 256, 28x28,
batch 32 in each precision, and the FLOPs of one heatmap (`FlopCounterMode`), and prints the measured
time per heatmap as a multiple of FLOPs / throughput; then the fp32 path at ``batch_size=auto`` (its
choice in brackets) against each fixed batch size, timed in interleaved rounds (best of at least 3).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from infoflow.data.shapes import ShapesDataModule, render_split
from infoflow.iba.estimator import Estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.reference import naive_per_sample
from infoflow.models import get_model
from infoflow.models.vit import TokenViT
from infoflow.utils.machine import conv_throughput, count_flops, describe
from infoflow.utils.precision import resolve_precision


def best_time(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """The shortest wall time of `repeats` calls of `fn` (s) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return best, out


def fidelity(maps: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Max abs difference and min per-image Pearson correlation of `maps` against `ref` (N, H, W)."""
    a, b = maps.flatten(1).double().cpu(), ref.flatten(1).double().cpu()
    corr = min(float(torch.corrcoef(torch.stack([a[i], b[i]]))[0, 1]) for i in range(a.shape[0]))
    return float((a - b).abs().max()), corr


def fit_flops(method: PerSampleIBA, images: torch.Tensor, targets: torch.Tensor) -> float:
    """FLOPs of one Per-Sample heatmap (head, every step's tail forward and input backward) on one image."""
    return count_flops(lambda: method.attribute(images[:1], targets[:1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="conv3_4")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--images", type=int, default=4, help="images for the fast path")
    parser.add_argument("--naive-images", type=int, default=2, help="images for the naive reference")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps (reference: 10)")
    parser.add_argument("--copies", type=int, default=10, help="noisy copies per step (reference: 10)")
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16"])
    parser.add_argument("--data", choices=["random", "shapes"], default="random",
                        help="random images (speed), or shapes test images with their labels and statistics from "
                             "shapes training images (fidelity of a model trained on them, e.g. --model resnet18 "
                             "--weights default --image-size 128)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the tail")
    parser.add_argument("--batch-sizes", nargs="*", default=["auto", "1", "2", "4", "8"],
                        help="fp32 fast path at each of these batch sizes (auto: chosen by timing, cached)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    num_classes = 4 if args.data == "shapes" else None
    side = args.image_size
    model = get_model(args.model, args.weights, num_classes, None if side is None else (3, side, side))
    if isinstance(model.module, TokenViT) and args.weights == "none":
        nn.init.normal_(model.module.heads.head.weight, std=0.02)
    model.module.to(device)
    size = model.input_size
    count = max(args.images, args.naive_images)
    if args.data == "shapes":
        test = render_split("test", count, size[1], 4, seed=0)
        images, targets = ShapesDataModule.normalize(test["image"].float() / 255).to(device), test["label"].to(device)
        statistics = ShapesDataModule.normalize(render_split("train", 32, size[1], 4, seed=0)["image"].float() / 255).to(device).split(8)
    else:
        images = torch.randn(count, *size, device=device)
        targets = torch.arange(images.shape[0], device=device) % model.num_classes
        statistics = [torch.randn(8, *size, device=device) for _ in range(4)]

    def make(precision: str) -> PerSampleIBA:
        return PerSampleIBA(model, args.layer, seed=0, batch_size=args.batch_size, steps=args.steps,
                            copies=args.copies, precision=precision)

    iba = make("32")
    with torch.no_grad():
        est = Estimator(tuple(iba.split.head(images[:1]).shape[1:])).to(device)
        for batch in statistics:
            est.update(iba.split.head(batch))
    # the reference runs torchvision's network as built, in-place ReLUs included
    reference = copy.deepcopy(model.module)
    for m in reference.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    print(describe(", ".join(args.precisions), device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; {args.model} {args.layer} "
          f"({iba.layer}), {size[1]}x{size[2]} {args.data} images, {args.steps} steps x {args.copies} copies, weights={args.weights}, "
          f"best of {args.repeats}")

    def naive() -> torch.Tensor:
        return torch.stack([
            naive_per_sample(reference, iba.layer, iba.bottleneck, images[i : i + 1], int(targets[i]),
                             steps=args.steps, copies=args.copies,
                             generator=torch.Generator(device).manual_seed(i))
            for i in range(args.naive_images)
        ])

    iba.set_estimator(est)
    seconds, ref = best_time(naive, args.repeats, device)
    naive_rate = args.naive_images / seconds
    print(f"{'naive reference fp32 (per image, full network, weight grads)':64s} {naive_rate:8.3f} heatmaps/s")
    n = min(args.images, args.naive_images)
    variants: list[tuple[str, PerSampleIBA]] = []
    for precision in args.precisions:
        method = make(precision)
        method.set_estimator(est)
        variants.append((f"infoflow {method.precision}" + (" (folded BN, channels-last)" if method.precision != "32" else ""), method))
        if method.precision == "32":
            folded = PerSampleIBA(model, args.layer, seed=0, batch_size=args.batch_size, steps=args.steps,
                                  copies=args.copies, fold_fp32=True)
            folded.set_estimator(est)
            variants.append(("infoflow 32 (folded BN, channels-last)", folded))
        if args.compile:
            compiled = make(precision)
            compiled.set_estimator(est)
            compiled.fast.tail = torch.compile(compiled.fast.tail)  # type: ignore[method-assign]
            compiled.attribute(images[:1], targets[:1])  # compile outside the timing
            variants.append((f"infoflow {method.precision} + torch.compile", compiled))
    fp32_fast = None
    for label, method in variants:
        seconds, maps = best_time(lambda m=method: m.attribute(images[: args.images], targets[: args.images]),
                                  args.repeats, device)
        rate = args.images / seconds
        diff, corr = fidelity(maps[:n], ref[:n])
        extra = ""
        if fp32_fast is None and method.precision == "32":
            fp32_fast = maps
        elif fp32_fast is not None:
            bits = maps.sum((1, 2)) / fp32_fast.sum((1, 2)) - 1
            extra = f"; vs infoflow fp32: total bits {float(bits.abs().max()):.2%}, " \
                    f"Pearson {fidelity(maps, fp32_fast)[1]:.5f}"
        floor = fit_flops(method, images, targets) / conv_throughput(method.precision, device, args.repeats)
        print(f"{label:64s} {rate:8.3f} heatmaps/s  speedup {rate / naive_rate:5.2f}x  "
              f"max abs diff {diff:.3g} bits/px, min Pearson {corr:.5f}{extra}")
        print(f"{'':64s} floor {floor:.3f} s/heatmap (FLOPs / conv throughput), "
              f"measured {1 / rate:.3f} s: {1 / (rate * floor):.2f}x the floor")
    for precision in args.precisions:
        print(f"conv 3x3 256->256 28x28 batch 32 channels-last, {precision}: "
              f"{conv_throughput(resolve_precision(precision, device), device, args.repeats) / 1e9:.1f} GFLOP/s")
    methods = {}
    for bs in args.batch_sizes:
        method = PerSampleIBA(model, args.layer, seed=0, batch_size=bs if bs == "auto" else int(bs), steps=args.steps,
                              copies=args.copies)
        method.set_estimator(est)
        if bs == "auto":  # measure (or load) outside the timing
            chosen = method.chunk_size(images[: args.images], targets[: args.images])
            bs = f"auto ({chosen})"
        methods[bs] = method
    times = {bs: float("inf") for bs in methods}
    for _ in range(max(args.repeats, 3)):  # interleaved rounds, best of each: drift hits every size alike
        for bs, method in methods.items():
            t, _ = best_time(lambda m=method: m.attribute(images[: args.images], targets[: args.images]), 1, device)
            times[bs] = min(times[bs], t)
    if times:
        fixed = {k: v for k, v in times.items() if not k.startswith("auto")}
        best_fixed = min(fixed, key=fixed.__getitem__) if fixed else None
        for bs, t in times.items():
            print(f"fp32 batch_size={bs:>8s}: {t / args.images:.3f} s/heatmap"
                  + (f"  ({t / fixed[best_fixed]:.3f}x the best fixed, batch_size={best_fixed})" if best_fixed else ""))
    print(f"(max heatmap value of the reference: {float(ref.abs().max()):.3g} bits/px)")


if __name__ == "__main__":
    main()
