"""Collect a Readout Bottleneck beta sweep into the paper's table 4 (CSV + markdown + plot).

    python train.py -m beta=0.01,0.1,1,10,100          # prints the sweep dir, multirun/train/<time>
    python experiments/collect_sweep.py multirun/train/<time> [--out DIR]

Reads the ``metrics.json`` that every finished ``task=readout`` run writes, anywhere under the given
directories, and writes into `--out` (default: the first directory):
- ``table4.csv``: one row per run (beta, lr, L_I/k in nats, top-1/top-5 with the bottleneck, the original
  model's top-1/top-5, the same for the untrained readout, epochs, run directory);
- ``table4.md``: table 4's layout: rows L_I/k, top-5, top-1; columns the original model, the untrained
  readout ("Initial") and one per beta;
- ``table4.png``: L_I/k and accuracies against beta (log axis), the original accuracies dashed.
All values are validation-set values after the last epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from infoflow.utils.tables import write_csv, write_markdown
from infoflow.viz import save_figure

#: table-4 rows: (label, column in the CSV)
ROWS = [("L_I/k [nats]", "info"), ("Top-5 acc.", "top5"), ("Top-1 acc.", "top1")]


def collect(dirs: list[Path]) -> pd.DataFrame:
    """One row per finished readout run under `dirs`, sorted by beta then lr."""
    rows = []
    for d in dirs:
        for path in sorted(d.rglob("metrics.json")):
            record = json.loads(path.read_text())
            if "beta" not in record or "metrics" not in record:
                continue
            final, initial = record["metrics"], record.get("initial", {})
            rows.append({
                "beta": record["beta"], "lr": record["lr"], "model": record["model"], "layer": record["layer"],
                **{key: final.get(f"val/{key}") for _, key in ROWS},
                "top1_orig": final.get("val/top1_orig"), "top5_orig": final.get("val/top5_orig"),
                **{f"init_{key}": initial.get(f"init/{key}") for _, key in ROWS},
                "epochs": record["epochs"], "run": str(path.parent),
            })
    if not rows:
        raise SystemExit(f"no finished readout runs (metrics.json) under {', '.join(map(str, dirs))}")
    return pd.DataFrame(rows).sort_values(["beta", "lr"], kind="stable").reset_index(drop=True)


def table4(df: pd.DataFrame) -> pd.DataFrame:
    """Table 4's layout: rows L_I/k, top-5, top-1; columns Orig., Initial and one per run ("beta/k")."""
    several_lr = df["lr"].nunique() > 1
    table = pd.DataFrame({"": [label for label, _ in ROWS]})
    table["Orig."] = ["—", df["top5_orig"].mean(), df["top1_orig"].mean()]
    table["Initial"] = [df[f"init_{key}"].mean() for _, key in ROWS]
    for _, run in df.iterrows():
        name = f"β = {run['beta']:g}/k" + (f" (lr {run['lr']:g})" if several_lr else "")
        table[name] = [run[key] for _, key in ROWS]
    return table


def plot(df: pd.DataFrame, path: Path, provenance: str) -> Path:
    fig, (ax_info, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_info.plot(df["beta"], df["info"], "o-")
    ax_info.set(xscale="log", xlabel="β [1/k]", ylabel="L_I/k [nats]", ylim=(0, None), title="information through the bottleneck")
    for key, colour in (("top1", "C0"), ("top5", "C1")):
        ax_acc.plot(df["beta"], df[key], "o-", color=colour, label=f"{key} with bottleneck")
        ax_acc.axhline(df[f"{key}_orig"].mean(), color=colour, ls="--", label=f"{key} original")
    ax_acc.set(xscale="log", xlabel="β [1/k]", ylabel="accuracy", ylim=(0, 1.02), title="validation accuracy")
    ax_acc.legend(fontsize=7)
    fig.suptitle(f"Readout Bottleneck, {df['model'].iloc[0]} @ {df['layer'].iloc[0]}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, provenance)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun (sweep) directories or run directories")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the first dir)")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.is_dir():
            raise SystemExit(f"{d} is not a directory")
    out = args.out or args.dirs[0]
    df = collect(args.dirs)
    table = table4(df)
    provenance = "runs:\n" + "\n".join(df["run"])
    write_csv(df, out / "table4.csv")
    note = (f"Validation values after the last epoch; L_I/k is the mean capacity per feature element; "
            f"{len(df)} runs of {df['model'].iloc[0]} @ {df['layer'].iloc[0]}.")
    write_markdown(table, out / "table4.md", title="Readout Bottleneck: influence of β (table 4)", note=note)
    plot(df, out / "table4.png", provenance)
    print((out / "table4.md").read_text())
    print(f"wrote {out / 'table4.csv'}, {out / 'table4.md'}, {out / 'table4.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
