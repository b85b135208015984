"""Overhead of the evaluation callbacks on the default classifier recipe (``task=classifier`` on shapes).

Trains the default classifier through the real CLI (``python train.py task=classifier``) without evaluation
callbacks, with ``layerwise`` and with ``attribution_metrics`` (their default settings), each in its own
process with ``--threads`` torch threads, and reads the training time from the run's log (``task=classifier
done in X s``) and the callbacks' own evaluation seconds from their CSV files.

    python benchmarks/bench_callbacks.py [--threads 2] [--epochs 6] [--num-train 4000] [extra overrides...]

Prints one row per setting: total seconds, seconds spent in evaluations, and the overhead ratio
(time with the callback / time without - 1). The default recipe is the target of "at most 25 %".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"none": "callbacks=default", "layerwise": "callbacks=[default,layerwise]",
            "attribution_metrics": "callbacks=[default,attribution_metrics]"}


def train_seconds(run: Path) -> float:
    found = re.findall(r"task=classifier done in ([0-9.]+) s", (run / "train.log").read_text())
    if not found:
        raise RuntimeError(f"no 'done in' line in {run / 'train.log'}")
    return float(found[-1])


def evaluation_seconds(run: Path, name: str) -> float:
    csv = run / "callbacks" / f"{name}.csv"
    if not csv.is_file():
        return 0.0
    return float(pd.read_csv(csv).groupby("epoch")["seconds"].first().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's (6)")
    parser.add_argument("--num-train", type=int, default=None, help="default: the recipe's (4000)")
    parser.add_argument("--only", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
    args = parser.parse_args()
    extra = list(args.overrides)
    if args.epochs is not None:
        extra.append(f"trainer.max_epochs={args.epochs}")
    if args.num_train is not None:
        extra.append(f"data.num_train={args.num_train}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["none", *[s for s in args.only if s != "none"]]:
            run = Path(tmp) / name
            cmd = [sys.executable, str(ROOT / "train.py"), "task=classifier", SETTINGS[name], "logger=csv",
                   "callbacks.progress_bar=null", f"hydra.run.dir={run}", *extra]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            rows.append({"callbacks": name, "train_s": train_seconds(run),
                         "evaluation_s": evaluation_seconds(run, name) if name != "none" else 0.0})
            print(f"{name}: {rows[-1]['train_s']:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    base = float(df.loc[df["callbacks"] == "none", "train_s"].iloc[0])
    df["overhead"] = df["train_s"] / base - 1
    df["evaluation_share"] = df["evaluation_s"] / base
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for r in df.itertuples(index=False):
        if r.callbacks != "none":
            print(f"overhead {r.callbacks}: {r.overhead:+.1%} (evaluations {r.evaluation_s:.1f} s of {base:.1f} s "
                  f"training without callbacks)")


if __name__ == "__main__":
    main()
