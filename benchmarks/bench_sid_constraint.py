"""Does SID meet its constraint in expectation? Fresh-draw ratio and runtime on the default shapesnet.

Runs `compute_sid` with the ``analysis=layerwise`` settings (100 steps x 4 draws, 32 evaluation draws,
tol 5 %) on the first test images of the default shapes data at every layer (conv1..conv4 and fc), then
re-estimates ``rho = E||h(x + sigma delta) - f||² / (alpha delta_f²)`` per (image, layer) on ``--check``
draws from a generator that SID never uses. Prints, per layer, the mean and the min-max over images of
that independent ratio, and the SID runtime, wall-clock and CPU time of this process (delta_f² is estimated
before the timers start; on a shared machine the CPU time is the steadier figure).

    python benchmarks/bench_sid_constraint.py [--images 4] [--steps 100] [--check 4096] [--threads 1] [--set KEY=VALUE ...]

``--set`` overrides further `SIDConfig` fields, e.g. ``--set max_eval_samples=32 --set fresh_rounds=0``
(the draws of the projection fixed at 32, no re-projection: the projection as it was before the fresh check).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from infoflow.data.shapes import ShapesDataModule
from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2, resolve_layers
from infoflow.discarding.features import noise_generator
from infoflow.models.zoo import get_model


def independent_ratio(
    features: LayerFeatures, x01: torch.Tensor, log_sigma: torch.Tensor, scale: float, layer: str,
    draws: int, chunk: int = 512,
) -> torch.Tensor:
    """(N,) mean over `draws` independent noise draws of ||h(x + sigma delta) - f||² / scale at `layer`."""
    out = []
    with torch.no_grad():
        f = features(x01)[layer].flatten(1)
        for i in range(x01.shape[0]):
            g = noise_generator("independent check", i, layer)
            total = 0.0
            for start in range(0, draws, chunk):
                noise = torch.randn((min(chunk, draws - start), *x01.shape[1:]), generator=g)
                fp = features(x01[i] + log_sigma[i].exp() * noise)[layer].flatten(1)
                total += (fp - f[i]).pow(2).sum(1).double().sum().item()
            out.append(total / draws / scale)
    return torch.tensor(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--check", type=int, default=4096, help="independent draws per (image, layer)")
    parser.add_argument("--set", action="append", default=[], help="SIDConfig field=value")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    dm = ShapesDataModule(num_classes=4, num_test=32)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    images01 = dm.denormalize(batch["image"])
    x01 = images01[: args.images]
    model = get_model("shapesnet", "default", num_classes=4, input_size=dm.input_size)
    layers = resolve_layers(model, [*model.conv_layers(), "fc"])
    features = LayerFeatures(model.module, layers, dm.mean, dm.std)
    df2 = estimate_delta_f2(features, images01[:16], tau=1e-3, samples=16)  # as analysis=layerwise
    extra = {k: type(getattr(SIDConfig, k))(v) if getattr(SIDConfig, k, None) is not None else float(v)
             for k, v in (s.split("=", 1) for s in args.set)}
    cfg = SIDConfig(steps=args.steps, samples=4, eval_samples=32, tol=0.05, **extra)
    print(f"default shapesnet, {args.images} images, layers {list(layers)}, {torch.get_num_threads()} threads, {cfg}")

    start, cpu = time.perf_counter(), time.process_time()
    sid = compute_sid(features, x01, df2, cfg)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print("| layer | in-sample ratio | SID's fresh ratio | independent ratio: mean (min-max) | draws (mean) |")
    print("|---|---|---|---|---|")
    for j, layer in enumerate(sid.layers):
        ind = independent_ratio(features, x01, sid.log_sigma[:, j], cfg.alpha * df2[layer].value, layer, args.check)
        fresh = f"{sid.ratio_fresh[:, j].mean():.3f}" if hasattr(sid, "ratio_fresh") else "-"
        draws = f"{sid.draws[:, j].mean():.0f}" if hasattr(sid, "draws") else f"{cfg.eval_samples}"
        print(f"| {layer} | {sid.ratio[:, j].mean():.3f} | {fresh} | "
              f"{ind.mean():.3f} ({ind.min():.3f}-{ind.max():.3f}) | {draws} |")
    print(f"SID runtime: {seconds:.1f} s wall, {cpu:.1f} s CPU for {args.images} images x {len(layers)} layers")


if __name__ == "__main__":
    main()
