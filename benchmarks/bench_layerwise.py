"""Time per image of SID for all 13 conv layers of VGG-16 (random weights) at 224x224.

Batched over layers (one forward pass per step for all layers, rows dropped after their layer) against
one layer at a time in a plain loop (the same optimiser, one `compute_sid` call per layer, each forward
pass stopping at its layer). Both run the same reduced schedule so that the benchmark takes minutes on
a CPU: by default 2 Adam steps with 1 noise draw each, 1 evaluation draw and 1 projection iteration
(the real defaults are 300 steps x 4 draws, 64 evaluation draws). delta_f² is estimated once and shared.

    python benchmarks/bench_layerwise.py [--steps 2] [--images 1] [--size 224]

The last line printed is ``speedup: X.XX`` (loop time / batched time).
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
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the reduced schedule does not meet the constraint tolerance

    torch.manual_seed(0)
    model = get_model("vgg16", "none", input_size=(3, args.size, args.size))
    layers = resolve_layers(model)
    images = torch.rand(args.images, 3, args.size, args.size)
    cfg = SIDConfig(steps=args.steps, samples=args.samples, eval_samples=1, projection_iters=1)
    features = LayerFeatures(model.module, layers, MEAN, STD)
    features.probe(images)
    df2 = estimate_delta_f2(features, images, samples=1)
    print(
        f"VGG-16, {len(layers)} conv layers, {args.images} image(s) {args.size}x{args.size}, "
        f"{torch.get_num_threads()} threads, {cfg.steps} steps x {cfg.samples} draws, pruning={features.prune}"
    )

    start = time.perf_counter()
    compute_sid(features, images, df2, cfg)
    batched = (time.perf_counter() - start) / args.images
    print(f"batched over layers: {batched:.2f} s/image")

    singles = {name: LayerFeatures(model.module, {name: path}, MEAN, STD) for name, path in layers.items()}
    for single in singles.values():  # one-time setup, excluded from both timings
        single.probe(images)
    start = time.perf_counter()
    for name, single in singles.items():
        compute_sid(single, images, {name: df2[name]}, cfg)
    loop = (time.perf_counter() - start) / args.images
    print(f"one layer at a time: {loop:.2f} s/image")
    print(f"speedup: {loop / batched:.2f}")


if __name__ == "__main__":
    main()
