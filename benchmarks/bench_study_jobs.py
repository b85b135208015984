"""Why a study runs its units as one-thread processes (``task.jobs=auto``): threads vs processes on this CPU.

Two kinds of unit work, the two a ``_shapes`` study is made of: training steps of the recipe (shapesnet from
scratch, Adam, batches of 64 shapes images at 64 px) and SID (the default shapesnet, conv1..conv4, the study's
SID settings at fewer steps). Each is timed, best of ``--repeats``, as

- one process with one thread (the floor's unit cost: ``t1``),
- one process with all the threads (``tN``; ideal ``t1 / N``),
- N one-thread processes at once (``tP``, the wall time until all finished; ideal ``t1``).

It prints the work per second of each way relative to one thread, and each wall time over its floor (the work
done x the measured one-thread cost per unit, spread over the N cores): the threads' ratio is ``tN / (t1 / N)``,
the processes' ``tP / t1``. The way with the lower ratio is the one ``auto`` should pick.

    python benchmarks/bench_study_jobs.py [--batches 20] [--sid-steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from infoflow.utils.machine import describe


def train_work(batches: int) -> Callable[[], None]:
    """`batches` Adam steps of a shapesnet from scratch on batches of 64 shapes images (data and model made first)."""
    from infoflow.data.shapes import ShapesDataModule
    from infoflow.models.zoo import get_model

    dm = ShapesDataModule(num_classes=4, num_train=64 * batches, num_val=16, num_test=16, batch_size=64)
    dm.setup("fit")
    data = list(dm.train_dataloader())
    torch.manual_seed(0)
    net = get_model("shapesnet", "none", num_classes=4, input_size=dm.input_size).module.train()
    opt = torch.optim.Adam(net.parameters(), lr=4e-3)

    def run() -> None:
        for batch in data:
            loss = torch.nn.functional.cross_entropy(net(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run


def sid_work(steps: int) -> Callable[[], None]:
    """SID of 4 test images at conv1..conv4 of the default shapesnet, `steps` steps, the study's other SID
    settings (max_eval_samples 512, 32 rows per pass); delta_f² estimated first."""
    from infoflow.data.shapes import ShapesDataModule
    from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2, resolve_layers
    from infoflow.models.zoo import get_model

    dm = ShapesDataModule(num_classes=4, num_test=16)
    dm.setup("test")
    images01 = dm.denormalize(next(iter(dm.test_dataloader()))["image"])
    model = get_model("shapesnet", "default", num_classes=4, input_size=dm.input_size)
    features = LayerFeatures(model.module.eval(), resolve_layers(model, ["conv1", "conv2", "conv3", "conv4"]),
                             dm.mean, dm.std)
    features(images01[:1])  # records the layer order
    df2 = estimate_delta_f2(features, images01, tau=1e-3, samples=8)
    cfg = SIDConfig(steps=steps, max_eval_samples=512, max_rows=32)
    return lambda: compute_sid(features, images01[:4], df2, cfg, progress=False) and None


def _unit(kind: str, size: int, threads: int, barrier) -> tuple[float, float]:  # noqa: ANN001
    """One unit in a worker: prepared, then run once all workers are ready; its (start, end) wall clock."""
    torch.set_num_threads(threads)
    run = (train_work if kind == "train" else sid_work)(size)
    barrier.wait()
    start = time.time()
    run()
    return start, time.time()


def best(kind: str, size: int, threads: int, processes: int, repeats: int) -> float:
    """Best over `repeats` of the wall time (first start to last end) of `processes` processes with `threads`
    threads each running one unit at once; the processes' start-up and preparation are left out."""
    ctx = get_context("spawn")
    times = []
    with ctx.Manager() as manager, ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        for _ in range(repeats):
            barrier = manager.Barrier(processes)
            spans = [f.result() for f in [pool.submit(_unit, kind, size, threads, barrier) for _ in range(processes)]]
            times.append(max(e for _, e in spans) - min(s for s, _ in spans))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="training steps per unit")
    parser.add_argument("--sid-steps", type=int, default=20, help="SID steps per unit")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(describe("32"), f" cores: {cores}")
    print(f"| work | 1 thread (s) | 1 process x {cores} threads (s) | {cores} processes x 1 thread (s) | "
          f"work/s vs 1 thread: threads, processes | wall / floor: threads, processes |")
    print("|---|---|---|---|---|---|")
    for kind, size in (("train", args.batches), ("sid", args.sid_steps)):
        t1 = best(kind, size, 1, 1, args.repeats)
        tn = best(kind, size, cores, 1, args.repeats)
        tp = best(kind, size, 1, cores, args.repeats)
        print(f"| {kind} ({size} {'batches' if kind == 'train' else 'steps'}) | {t1:.2f} | {tn:.2f} | {tp:.2f} | "
              f"{t1 / tn:.2f}x, {cores * t1 / tp:.2f}x | {tn / (t1 / cores):.2f}, {tp / t1:.2f} |")


if __name__ == "__main__":
    main()
