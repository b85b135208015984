"""Time per image of SID for all 13 conv layers of VGG-16 (random weights) at 224x224.

Batched over layers (one forward pass per step for all layers, rows dropped after their layer) against
one layer at a time in a plain loop (the same optimiser, one `compute_sid` call per layer, each forward
pass stopping at its layer). Both run the same reduced schedule so that the benchmark takes minutes on
a CPU: by default 2 Adam steps with 1 noise draw each, 1 evaluation draw and 1 projection iteration
(the real defaults are 300 steps x 4 draws, 64 evaluation draws). delta_f² is estimated once and shared.

Per ``--precisions`` value (fp32 and bf16 by default), the same SID runs with both layer schedules
(``SIDConfig.schedule``: ``batched``, ``per-layer``; the default is ``batched``, see `infoflow.discarding.sid`) and with the deepest
layer alone, and the ratio (all 13 layers) / (deepest alone) is printed (its arithmetic floor: the FLOPs alone give
~7.4 for VGG-16, the sum over layers of the network up to each). bf16 lines give the largest |mean log
sigma - fp32| over (image, layer) pairs (bound 0.01, i.e. sigma within 1 %, on trained networks).

    python benchmarks/bench_layerwise.py [--steps 2] [--images 1] [--size 224] [--device cuda]

The last line printed is ``speedup: X.XX`` (loop time / fp32 batched time).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2, resolve_layers
from infoflow.models.zoo import get_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    warnings.simplefilter("ignore")  # the reduced schedule does not meet the constraint tolerance

    torch.manual_seed(0)
    model = get_model("vgg16", "none", input_size=(3, args.size, args.size))
    model.module.to(device)
    layers = resolve_layers(model)
    images = torch.rand(args.images, 3, args.size, args.size, device=device)
    cfg = SIDConfig(steps=args.steps, samples=args.samples, eval_samples=1, projection_iters=1, schedule="batched")
    features = LayerFeatures(model.module, layers, MEAN, STD).to(device)
    features.probe(images)
    df2 = estimate_delta_f2(features, images, samples=1)
    print(
        f"VGG-16, {len(layers)} conv layers, {args.images} image(s) {args.size}x{args.size}, "
        f"{torch.get_num_threads()} threads, {cfg.steps} steps x {cfg.samples} draws, pruning={features.prune}"
    )

    start = time.perf_counter()
    compute_sid(features, images, df2, cfg)
    batched = (time.perf_counter() - start) / args.images
    print(f"fp32 batched over layers: {batched:.2f} s/image")

    singles = {name: LayerFeatures(model.module, {name: path}, MEAN, STD).to(device) for name, path in layers.items()}
    for single in singles.values():  # one-time setup, excluded from both timings
        single.probe(images)
    start = time.perf_counter()
    for name, single in singles.items():
        compute_sid(single, images, {name: df2[name]}, cfg)
    loop = (time.perf_counter() - start) / args.images
    print(f"fp32 one layer at a time (a loop of compute_sid calls): {loop:.2f} s/image")

    deepest = features.order[-1]
    reference = None
    for precision in args.precisions:
        features.precision = singles[deepest].precision = precision
        times = {}
        for schedule in ("batched", "per-layer"):
            start = time.perf_counter()
            result = compute_sid(features, images, df2, SIDConfig(**{**cfg.__dict__, "schedule": schedule}))
            times[schedule] = (time.perf_counter() - start) / args.images
        start = time.perf_counter()
        compute_sid(singles[deepest], images, {deepest: df2[deepest]}, cfg)
        alone = (time.perf_counter() - start) / args.images
        reference = result if reference is None else reference
        shift = float((result.log_sigma - reference.log_sigma).mean((2, 3)).abs().max())
        picked = SIDConfig().schedule
        print(f"{features.precision}: batched {times['batched']:.2f} s/image, per-layer {times['per-layer']:.2f} "
              f"s/image (the default: {picked}), {deepest} alone {alone:.2f} s/image; all "
              f"{len(layers)} layers / deepest alone: {min(times.values()) / alone:.2f}; "
              f"max |mean log sigma - fp32|: {shift:.4f}")
    print(f"speedup: {loop / batched:.2f}")


if __name__ == "__main__":
    main()
