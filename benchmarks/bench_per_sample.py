"""Per-Sample Bottleneck: infoflow's fast path against the reference library's loop, speed and fidelity.

Default: ResNet-50 at conv3_4 (torchvision `layer2`); ``--model vgg16 --layer conv4_1`` checks a network
with an in-place ReLU right after the layer; ``--model vit_b_16 --layer block6`` a ViT's token map (its
class token crosses the cut, so infoflow's tail reruns the network too, with the hook split; torchvision's
zero-initialised ViT classifier is given random weights, else every gradient would vanish). 224x224 inputs, random weights, statistics from random images.
The naive reference is done the way the reference library does it: one image per call, the full network
from the input at every step (a forward hook replaces the layer's output), weights not frozen, and the
network's ReLUs in place as torchvision builds them. Both use the same noise, so their heatmaps must agree
up to floating-point rounding; the script prints the max abs difference and the min Pearson correlation.

    python benchmarks/bench_per_sample.py [--model vgg16 --layer conv4_1] [--images 4] [--naive-images 2]
        [--steps 10 --copies 10]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from infoflow.iba.estimator import Estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.reference import naive_per_sample
from infoflow.models import get_model
from infoflow.models.vit import TokenViT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="conv3_4")
    parser.add_argument("--images", type=int, default=4, help="images for the fast path")
    parser.add_argument("--naive-images", type=int, default=2, help="images for the naive reference")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps (reference: 10)")
    parser.add_argument("--copies", type=int, default=10, help="noisy copies per step (reference: 10)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = get_model(args.model)
    if isinstance(model.module, TokenViT):
        nn.init.normal_(model.module.heads.head.weight, std=0.02)
    size = model.input_size
    images = torch.randn(max(args.images, args.naive_images), *size)
    targets = torch.arange(images.shape[0]) % model.num_classes
    iba = PerSampleIBA(model, args.layer, seed=0, batch_size=args.batch_size, steps=args.steps, copies=args.copies)
    with torch.no_grad():
        first = iba.split.head(torch.randn(8, *size))
        est = Estimator(tuple(first.shape[1:]))
        est.update(first)
        for _ in range(3):
            est.update(iba.split.head(torch.randn(8, *size)))
    iba.set_estimator(est)
    # the reference runs torchvision's network as built, in-place ReLUs included
    reference = copy.deepcopy(model.module)
    for m in reference.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} {args.layer} "
          f"({iba.layer}), {size[1]}x{size[2]}, {args.steps} steps x {args.copies} copies")

    start = time.perf_counter()
    fast = iba.attribute(images[: args.images], targets[: args.images])
    fast_rate = args.images / (time.perf_counter() - start)
    how = "hook split: full network" if iba.split.needs_input else "tail only"
    print(f"infoflow (frozen, {how}, batched): {fast_rate:.3f} heatmaps/s")

    start = time.perf_counter()
    naive = torch.stack([
        naive_per_sample(reference, iba.layer, iba.bottleneck, images[i : i + 1], int(targets[i]),
                         steps=args.steps, copies=args.copies, generator=torch.Generator().manual_seed(i))
        for i in range(args.naive_images)
    ])
    naive_rate = args.naive_images / (time.perf_counter() - start)
    print(f"naive reference (per image, full network, weight grads): {naive_rate:.3f} heatmaps/s")

    n = min(args.images, args.naive_images)
    a, b = fast[:n].flatten(1), naive[:n].flatten(1)
    corr = min(float(torch.corrcoef(torch.stack([a[i], b[i]]))[0, 1]) for i in range(n))
    print(f"max abs difference: {float((a - b).abs().max()):.3g} bits/pixel "
          f"(max heatmap value {float(b.abs().max()):.3g}); min Pearson correlation: {corr:.6f}")
    print(f"speedup: {fast_rate / naive_rate:.2f}")


if __name__ == "__main__":
    main()
