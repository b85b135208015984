"""Readout Bottleneck speed: training throughput, and heatmaps per second against the Per-Sample Bottleneck.

Both heatmap methods run on the same model, layer, feature statistics and images (shapes images; random
weights: speed does not depend on them). Default: the paper's ResNet-50 at conv3_4, 224x224, with the
paper's readout layers. Training is timed inside Lightning's loop (the real `ReadoutModule`, full batches
after a warm-up batch). The readout needs one forward pass per heatmap (plus its small 1x1-conv network),
the Per-Sample Bottleneck 10 steps of 10 noisy forward and backward passes through the part after the layer.
On CPU, times are the process's CPU time, on GPU wall time; heatmap timings keep the fastest of several
repeats, the one least disturbed by other processes.

    python benchmarks/bench_readout.py [--model resnet50 --layer conv3_4 --image-size 224] [--device cuda]
    python benchmarks/bench_readout.py --model vgg16 --layer conv4_1
    python benchmarks/bench_readout.py --model shapesnet --layer conv3 --image-size 64 --num-classes 4

Training and heatmaps run once per ``--precisions`` value (fp32 and bf16 by default; training through
Lightning's ``precision``, from the same initial readout), side by side; the bf16 heatmaps are compared
with the fp32 ones of the same readout (min Pearson; bound 0.99 on trained networks).

Prints the rates and, last, ``speedup: X.XX`` (Per-Sample seconds per heatmap / fp32 readout seconds per heatmap).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from infoflow.data.shapes import render_split
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.readout import ReadoutBottleneck, ReadoutIBA, fit_statistics
from infoflow.models.zoo import get_model
from infoflow.tasks.readout import ReadoutModule
from infoflow.utils.precision import lightning_precision

CONF = Path(__file__).resolve().parents[1] / "conf"


def now(device: torch.device) -> float:
    """CPU time of this process on CPU; wall time (after synchronising) on GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class _Timer(pl.Callback):
    """Time and images of the training batches after the first (warm-up) one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start: float | None = None
        self.images = 0
        self.seconds = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, idx: int) -> None:
        now_ = now(self.device)
        if self.start is not None:
            self.images += batch["image"].shape[0]
            self.seconds = now_ - self.start
        else:
            self.start = now_


def dict_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size,
                      collate_fn=lambda items: {"image": torch.stack([i for i, _ in items]),
                                                "label": torch.stack([t for _, t in items])})


def fastest(fn, device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `fn` (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = now(device)
        fn()
        times.append(now(device) - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="conv3_4")
    parser.add_argument("--readout-layers", default=None, help="comma-separated; default: the model config's")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-batches", type=int, default=5, help="timed training batches + 1 warm-up")
    parser.add_argument("--images", type=int, default=4, help="images for the heatmap comparison")
    parser.add_argument("--repeats", type=int, default=2, help="Per-Sample timings (the fastest is kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    readout_layers = (args.readout_layers.split(",") if args.readout_layers else
                      list(OmegaConf.load(CONF / "model" / f"{args.model}.yaml").readout_layers))
    torch.manual_seed(0)
    model = get_model(args.model, "none", args.num_classes, (3, args.image_size, args.image_size))
    model.module.to(device)
    n = max(args.images, args.batch_size * args.train_batches)
    data = render_split("train", n, args.image_size, min(args.num_classes, 6), seed=0)
    images = ((data["image"].float() / 255 - 0.5) / 0.25)
    labels = data["label"] % args.num_classes
    readout = ReadoutBottleneck(model, args.layer, readout_layers)
    stats = fit_statistics(readout, dict_loader(images, labels, args.batch_size), max_samples=n)
    readout.set_statistics(stats)
    print(f"torch {torch.__version__}, device {device} ({torch.get_num_threads()} CPU threads); {args.model} @ "
          f"{args.layer} (feature map {tuple(readout.feature_shape)}), readouts {readout_layers}, "
          f"{args.image_size}x{args.image_size} images")

    initial = {k: v.clone() for k, v in readout.state_dict().items()}
    loader = dict_loader(images[: args.batch_size * args.train_batches], labels[: args.batch_size * args.train_batches],
                         args.batch_size)
    for precision in args.precisions:  # each from the same initial readout; the fp32-trained one is kept
        readout.load_state_dict(initial)
        timer = _Timer(device)
        module = ReadoutModule(readout, beta=10.0, lr=1e-3, meta=readout.meta(), num_heatmaps=0)
        trainer = pl.Trainer(accelerator=device.type, devices=1, max_epochs=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False, callbacks=[timer],
                             precision=lightning_precision(precision, device.type))
        trainer.fit(module, train_dataloaders=loader)
        rate = timer.images / timer.seconds
        if precision == args.precisions[0]:
            train_rate, trained = rate, {k: v.clone() for k, v in readout.state_dict().items()}
        print(f"readout training {trainer.precision}: {rate:.1f} img/s (batch {args.batch_size}, "
              f"{timer.images} images timed)")
    readout.load_state_dict(trained)

    x = images[: args.images].to(device)
    target = labels[: args.images].to(device)
    maps = {}
    for precision in args.precisions:
        fast = ReadoutIBA(readout.to(device), batch_size=args.batch_size, precision=precision)
        fast.attribute(x, target)  # warm-up
        per = fastest(lambda f=fast: f.attribute(x, target), device, 10 * args.repeats) / args.images
        maps[precision] = fast.attribute(x, target).flatten(1).double().cpu()
        ref = maps[args.precisions[0]]
        corr = min(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(maps[precision], ref, strict=True))
        if precision == args.precisions[0]:
            readout_per = per
        print(f"readout heatmaps {fast.precision}: {1 / per:.2f} heatmaps/s ({1e3 * per:.1f} ms each), "
              f"{readout_per / per:.2f}x fp32; min Pearson with {args.precisions[0]}: {corr:.5f}")

    slow = PerSampleIBA(model, args.layer, batch_size=args.batch_size, seed=0,
                        estimator=stats[readout.bottleneck_stat_name])
    per_sample_per = fastest(lambda: slow.attribute(x, target), device, args.repeats) / args.images
    print(f"per-sample heatmaps: {1 / per_sample_per:.2f} heatmaps/s ({1e3 * per_sample_per:.1f} ms each)")
    print(f"readout training / per-sample heatmaps: {train_rate * per_sample_per:.1f}x images per second")
    print(f"speedup: {per_sample_per / readout_per:.2f}")


if __name__ == "__main__":
    main()
