"""Regenerate every figure and table that the docs (docs/) quote, into one folder: ``make figures``.

    python experiments/figures.py [--out figures] [--only demo,table1,layerwise,grid,grid_vit,fig9,bench]
    python experiments/figures.py --only studies       # the six _shapes studies (about an hour on 2 cores)

Each step runs the command a user would run, from the project root, with its run directory inside
``--out``, and keeps its terminal output there as ``<step>.log``:

- ``demo``: ``python evaluate.py`` (``make demo``): the overall inside/outside ratio and the per-class table;
- ``table1``: ``python evaluate.py experiment=table1``: Table 1 on the built-in data and its plots;
- ``layerwise``: ``python evaluate.py analysis=layerwise``: the layer-wise SID/concentration table and plots;
- ``grid``, ``grid_vit``, ``fig9``: ``python evaluate.py analysis=grid`` on the default model, on shapesvit,
  and with the steps recorded at conv2 for σ_s = 0 and 2 (IBA Figs. 4/10 and 9);
- ``study_<name>``: ``python train.py experiment=<name>_shapes`` for each study (``studies``: all six);
- ``bench``: ``python benchmarks/bench_<name>.py`` for each benchmark (``make bench``): its printed result.

``<out>/README.md`` then lists, per step, the command, the wall time, where its files are and the tables
it produced, with the machine (CPU, threads, torch) that produced them. The default model and the
feature statistics are trained / estimated on first use and cached as usual (``$INFOFLOW_CACHE``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from infoflow.utils.machine import cpu_model
from infoflow.utils.tables import to_markdown_table

ROOT = Path(__file__).resolve().parents[1]
#: step -> the entry point and overrides it runs (beyond the run directory)
COMMAND_STEPS: dict[str, tuple[str, list[str]]] = {
    "demo": ("evaluate.py", []),
    "table1": ("evaluate.py", ["experiment=table1"]),
    "layerwise": ("evaluate.py", ["analysis=layerwise"]),
    "grid": ("evaluate.py", ["analysis=grid"]),
    "grid_vit": ("evaluate.py", ["analysis=grid", "model=shapesvit"]),
    "fig9": ("evaluate.py", ["analysis=grid", "analysis.record_steps=true", "analysis.sigmas=[0,2]",
                             "analysis.layers=[conv2]"]),
    **{f"study_{name}": ("train.py", [f"experiment={name}_shapes"])
       for name in ("distillation", "damage", "autoencoder", "compression", "epochs", "null")},
}
#: steps that name several (not run by default)
GROUPS = {"studies": [s for s in COMMAND_STEPS if s.startswith("study_")]}
STEPS = [*(s for s in COMMAND_STEPS if s not in GROUPS["studies"]), "bench"]


def _run(cmd: list[str], log: Path) -> tuple[float, str]:
    """Run `cmd` in the project root, echoing and saving its output; return (seconds, output)."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")})
    seconds = time.perf_counter() - start
    log.write_text(proc.stdout)
    print(proc.stdout[-2000:], flush=True)
    if proc.returncode != 0:
        sys.exit(f"failed (exit {proc.returncode}): {shlex.join(cmd)}; output in {log}")
    return seconds, proc.stdout


def _tables(run_dir: Path) -> str:
    """The markdown tables a run wrote (``*.md``), else its summary CSVs as markdown."""
    parts = [p.read_text().strip() for p in sorted(run_dir.glob("*.md"))]
    if not parts:
        parts = [f"`{p.name}`\n\n{to_markdown_table(pd.read_csv(p))}" for p in sorted(run_dir.glob("*summary*.csv"))]
    return "\n\n".join(parts)


def _machine() -> str:
    cpu = cpu_model()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit or 'unknown'}; {cpu}, "
            f"{os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "figures", help="folder for everything (default: figures/)")
    valid = [*COMMAND_STEPS, "bench", *GROUPS]
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(valid)}")
    args = parser.parse_args()
    if unknown := [s for s in args.only.split(",") if s not in valid]:
        sys.exit(f"unknown step(s) {unknown}; choose from {', '.join(valid)}")
    steps = [t for s in args.only.split(",") for t in GROUPS.get(s, [s])]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"# Figures and tables of the docs\n\nRegenerated with `python experiments/figures.py "
                f"--only {','.join(steps)}` (`make figures`) on {_machine()}."]
    for step in steps:
        if step == "bench":
            bench_dir = out / "bench"
            bench_dir.mkdir(exist_ok=True)
            for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
                cmd = [sys.executable, f"benchmarks/{script.name}"]
                seconds, text = _run(cmd, bench_dir / f"{script.stem}.log")
                tail = "\n".join(text.strip().splitlines()[-12:])
                sections.append(f"## {script.stem}\n\n`python benchmarks/{script.name}` ({seconds:.0f} s; "
                                f"output: `bench/{script.stem}.log`)\n\n```\n{tail}\n```")
            continue
        run_dir = out / step
        entry, overrides = COMMAND_STEPS[step]
        seconds, _ = _run([sys.executable, entry, *overrides, f"hydra.run.dir={run_dir}"], out / f"{step}.log")
        command = shlex.join(["python", entry, *overrides])
        sections.append(f"## {step}\n\n`{command}` ({seconds:.0f} s; files: `{step}/`, output: `{step}.log`)\n\n"
                        f"{_tables(run_dir)}")
    (out / "README.md").write_text("\n\n".join(sections) + "\n")
    print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    main()
