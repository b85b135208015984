"""Per-Sample Bottleneck heatmaps per second: infoflow's fast path against the reference library's loop.

ResNet-50 at conv3_4 (torchvision `layer2`), 224x224 inputs, random weights. The naive reference is done
the way the reference library does it: one image per call, the full network from the input at every step,
weights not frozen. Both use the same noise, so their heatmaps must agree up to floating-point rounding.

    python benchmarks/bench_per_sample.py [--images 4] [--naive-images 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from infoflow.iba.estimator import Estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.reference import naive_per_sample
from infoflow.models import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images for the fast path")
    parser.add_argument("--naive-images", type=int, default=2, help="images for the naive reference")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = get_model("resnet50")
    images = torch.randn(max(args.images, args.naive_images), 3, 224, 224)
    targets = torch.arange(images.shape[0]) % 1000
    iba = PerSampleIBA(model, "conv3_4", seed=0, batch_size=args.batch_size)
    est = Estimator((512, 28, 28))
    with torch.no_grad():
        for _ in range(4):
            est.update(iba.split.head(torch.randn(8, 3, 224, 224)))
    iba.set_estimator(est)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-50 conv3_4, 224x224")

    start = time.perf_counter()
    fast = iba.attribute(images[: args.images], targets[: args.images])
    fast_rate = args.images / (time.perf_counter() - start)
    print(f"infoflow (frozen, tail only, batched): {fast_rate:.3f} heatmaps/s")

    start = time.perf_counter()
    naive = torch.stack([
        naive_per_sample(model.module, iba.layer, iba.bottleneck, images[i : i + 1], int(targets[i]),
                         generator=torch.Generator().manual_seed(i))
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
