"""bf16 against fp32 on a trained network, at full size: every accuracy bound of the precision table.

Default: torchvision's ResNet-18 trained on 128x128 shapes images (``weights=default``: trained on first use
and cached, about 20 minutes on two CPU cores). Prints, bf16 against fp32 with the same seeds:
Per-Sample heatmaps (min Pearson per image, max relative total-bits difference, bbox ratio) per layer,
the degradation area and Sensitivity-n correlations, and SID per layer (relative difference of the layer SID,
max over images; fresh constraint ratios), next to SID's own noise: fp32 with another noise seed.
Bounds: Pearson >= 0.99, total bits within 2 %, metrics within 0.01, SID within 1 %.

    python benchmarks/bench_precision_bounds.py [--model resnet18 --image-size 128] [--images 8]
        [--layers conv3_2 conv4_2] [--sid-layers conv2_2 conv3_2 conv4_2 conv5_2] [--sid-steps 30]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from bench_per_sample import fidelity  # benchmarks/ is the script's directory

from infoflow.data.shapes import ShapesDataModule, box_to_mask, render_split
from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2, resolve_layers
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.metrics.bbox import BoundingBoxRatio
from infoflow.metrics.degradation import Degradation
from infoflow.metrics.sensitivity import SensitivityN
from infoflow.models import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--layers", nargs="+", default=["conv3_2", "conv4_2"])
    parser.add_argument("--steps", type=int, default=10, help="Per-Sample steps (copies: the same)")
    parser.add_argument("--tile-size", type=int, default=16)
    parser.add_argument("--sid-layers", nargs="+", default=["conv2_2", "conv3_2", "conv4_2", "conv5_2"])
    parser.add_argument("--sid-images", type=int, default=2)
    parser.add_argument("--sid-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size, n = args.image_size, args.images
    model = get_model(args.model, args.weights, 4, (3, size, size))
    data = render_split("test", n, size, 4, seed=0)
    x01 = data["image"].float() / 255
    x, y = ShapesDataModule.normalize(x01), data["label"]
    accuracy = float((model.module(x).argmax(1) == y).float().mean())
    print(f"{args.model} (weights={args.weights}) on {n} {size}x{size} shapes test images, accuracy {accuracy:.3f}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    train = ShapesDataModule.normalize(render_split("train", 64, size, 4, seed=0)["image"].float() / 255)
    boxes = box_to_mask(data["box"], size, size)
    for layer in args.layers:
        out = {}
        for precision in ("32", "bf16"):
            iba = PerSampleIBA(model, layer, seed=0, steps=args.steps, copies=args.steps, precision=precision)
            iba.fit([{"image": train}])
            result = iba.explain(x, y)
            ratio = BoundingBoxRatio(max_box_fraction=1.0)
            ratio.update(result.heatmap, boxes)
            out[precision] = (result, float(ratio.compute()))
        (ref, box_ref), (low, box_low) = out["32"], out["bf16"]
        bits = ((low.total_bits - ref.total_bits).abs() / ref.total_bits.abs()).max()
        print(f"Per-Sample {layer}: min Pearson {fidelity(low.heatmap, ref.heatmap)[1]:.4f} (>= 0.99), "
              f"total bits {float(bits):.2%} (<= 2 %), bbox ratio {box_ref:.3f} vs {box_low:.3f}")

    maps = data["mask"].float() + 0.1 * torch.rand(n, size, size, generator=torch.Generator().manual_seed(0))
    scores = {}
    for precision in ("32", "bf16"):
        degradation = Degradation(model.module, (size, size), args.tile_size, num_points=33, precision=precision)
        degradation.update(x, y, maps)
        sensitivity = SensitivityN(model.module, (size, size), args.tile_size, num_n=8, num_subsets=20,
                                   precision=precision)
        sensitivity.update(x, y, maps)
        scores[precision] = (float(degradation.compute().score), sensitivity.compute().correlation)
    print(f"degradation area ({args.tile_size}x{args.tile_size} tiles): fp32 {scores['32'][0]:.4f}, bf16 "
          f"{scores['bf16'][0]:.4f} (within 0.01); Sensitivity-n max |difference| "
          f"{float((scores['32'][1] - scores['bf16'][1]).abs().max()):.4f} (<= 0.01)")

    features = LayerFeatures(model.module, resolve_layers(model, args.sid_layers), ShapesDataModule.mean,
                             ShapesDataModule.std)
    df2 = estimate_delta_f2(features, x01[:4], samples=4)
    cfg = SIDConfig(steps=args.sid_steps, samples=2, eval_samples=32, max_eval_samples=1024, tol=0.05)
    runs = {}
    for label, precision, seed in (("fp32", "32", 0), ("bf16", "bf16", 0), ("fp32, noise seed 1", "32", 1)):
        features.precision = precision
        runs[label] = compute_sid(features, x01[: args.sid_images], df2, dataclasses.replace(cfg, seed=seed))
    ref = runs["fp32"].per_pixel
    for label in ("bf16", "fp32, noise seed 1"):
        rel = ((runs[label].per_pixel - ref) / ref).abs().max(0).values
        fresh = runs[label].ratio_fresh
        print(f"SID {label} vs fp32 ({args.sid_steps} steps): " + ", ".join(
            f"{layer} {float(r):.2%}" for layer, r in zip(args.sid_layers, rel, strict=True))
            + f"; fresh constraint ratios {float(fresh.min()):.3f}-{float(fresh.max()):.3f} (tol {cfg.tol})")


if __name__ == "__main__":
    main()
