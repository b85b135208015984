"""A study's comparison report, from its stages' outputs, into the study's run directory and W&B.

Inputs: the layer-wise means of the study's layer-wise stage (``layerwise_summary.csv`` of an ``analysis=layerwise``
stage: model, layer_index, layer, sid_per_pixel, ru_per_pixel, concentration; or, for a training stage with the
``layerwise`` callback, its ``callbacks/layerwise.csv``, each evaluated epoch a model ``epoch_<N>``: `epoch_layers`), each compared model's training stage (``done.json``:
test/acc and the study's figures such as sparsity) and, where there is one, the robustness stage
(``robustness.csv``). Outputs:

- ``report.md``: the per-model table (accuracy, the study's figures, SID/RU/concentration per layer), the
  per-layer table and one verdict line per paper claim (`infoflow.studies.verdicts`);
- ``report.csv`` (one row per model) and ``report_layers.csv`` (one row per model and layer);
- ``report_{sid,ru,concentration}.png``: the models' layer-wise curves overlaid;
- W&B: the tables, line-series charts of the curves, the figures and the verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infoflow.errors import DataError
from infoflow.studies.verdicts import VERDICTS, Verdict
from infoflow.utils.checkpoint import atomic_write
from infoflow.utils.tables import to_markdown_table, write_csv
from infoflow.viz import plot_curves

#: per-layer quantities: column -> (short name, axis label)
QUANTITIES = {
    "sid_per_pixel": ("SID", "SID [nats/pixel]"),
    "ru_per_pixel": ("RU", "RU [nats/pixel]"),
    "concentration": ("conc", "concentration [nats/pixel]"),
}


@dataclass
class Report:
    models: pd.DataFrame   # one row per model
    layers: pd.DataFrame   # one row per (model, layer)
    verdicts: list[Verdict]
    markdown: str
    figures: list[Path]


def epoch_layers(path: str | Path) -> pd.DataFrame:
    """The ``layerwise`` callback's CSV (one row per evaluated epoch and layer) as a layer-wise table whose models
    are the epochs: model ``epoch_<N>`` (N: epochs trained, 0: the initial weights), in epoch order."""
    table = pd.read_csv(path).sort_values(["epoch", "layer_index"], kind="stable")
    if table.empty:
        raise DataError(f"{path} has no rows: the layerwise callback evaluated no epoch")
    table.insert(0, "model", [f"epoch_{int(e)}" for e in table.epoch])
    keep = ["model", "epoch", "layer_index", "layer", *[c for c in QUANTITIES if c in table]]
    return table[keep].reset_index(drop=True)


def model_table(models: Sequence[Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]],
                layers: pd.DataFrame, extras: Mapping[str, str], robustness: pd.DataFrame | None) -> pd.DataFrame:
    """One row per compared model: accuracy (its stage's test/acc), `extras` (column -> stage metric),
    the last analysed layer's SID (``sid_last``) and the robustness columns, in `models` order."""
    rows = []
    for m in models:
        metrics = records.get(m.get("stage") or "", {}).get("metrics", {})
        own = layers[layers.model == m["name"]].sort_values("layer_index")
        row = {"model": m["name"], "accuracy": metrics.get("test/acc", np.nan)}
        row.update({col: metrics.get(key, np.nan) for col, key in extras.items()})
        row["sid_last"] = float(own.sid_per_pixel.iloc[-1]) if len(own) else np.nan
        row["last_layer"] = own.layer.iloc[-1] if len(own) else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if robustness is not None:
        table = table.merge(robustness, on="model", how="left")
    return table


def wide(models: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """`models` with one column per quantity and layer (``SID conv1``, ...), quantities never measured left out."""
    out = models.copy()
    for col, (short, _) in QUANTITIES.items():
        if col not in layers or layers[col].isna().all():
            continue
        pivot = layers.pivot_table(index="model", columns="layer", values=col, sort=False, dropna=False)
        order = layers.drop_duplicates("layer").sort_values("layer_index").layer
        for layer in order:
            out[f"{short} {layer}"] = out.model.map(pivot[layer]) if layer in pivot else np.nan
    return out


def curves(layers: pd.DataFrame, out: Path, title: str, provenance: str) -> list[Path]:
    """The layer-wise curves of every model overlaid, one PNG per measured quantity."""
    paths = []
    names = ", ".join(f"{i}={n}" for i, n in layers.drop_duplicates("layer_index")[["layer_index", "layer"]]
                      .sort_values("layer_index").itertuples(index=False))
    for col, (short, ylabel) in QUANTITIES.items():
        if col not in layers or layers[col].isna().all():
            continue
        data = {m: (g.layer_index.to_numpy(), g[col].to_numpy())
                for m, g in layers.sort_values("layer_index").groupby("model", sort=False)}
        stem = {"SID": "sid", "RU": "ru", "conc": "concentration"}[short]
        paths.append(plot_curves(data, out / f"report_{stem}.png", "layer", ylabel, f"{title}: {short} ({names})",
                                 provenance))
    return paths


def build_report(study: str, out: str | Path, models: pd.DataFrame, layers: pd.DataFrame,
                 claims: Mapping[str, Any], notes: Sequence[str] = (), provenance: str = "") -> Report:
    """Write the report files of `study` into `out` (module docstring) and return them."""
    out = Path(out)
    order = {m: i for i, m in enumerate(models.model)}
    layers = layers[layers.model.isin(order)].copy()
    layers["_order"] = layers.model.map(order)
    layers = layers.sort_values(["_order", "layer_index"]).drop(columns="_order").reset_index(drop=True)
    verdicts = VERDICTS.get(study)(layers, models, dict(claims))
    table = wide(models, layers)
    long = layers[["model", "layer_index", "layer", *[c for c in QUANTITIES if c in layers]]]
    write_csv(table, out / "report.csv")
    write_csv(long, out / "report_layers.csv")
    figures = curves(layers, out, study, provenance)
    text = "\n\n".join([
        f"# Study: {study}",
        "SID, RU and concentration in nats per input pixel (means over the analysed test images); higher SID: "
        "more input information discarded. NaN: not measured.",
        "## Models\n\n" + to_markdown_table(table),
        "## Per layer\n\n" + to_markdown_table(long),
        "## Verdicts\n\n" + "\n".join(v.line() for v in verdicts),
        *(["## Notes\n\n" + "\n".join(f"- {n}" for n in notes)] if notes else []),
    ]) + "\n"
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))
    return Report(table, long, verdicts, text, figures)


def log_report(loggers: Sequence[Any], report: Report, study: str) -> None:
    """Log the report to the W&B loggers (tables, line-series charts, figures, verdicts) and scalars to all."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    scalars = {f"{study}/{r.model}/{c}": float(getattr(r, c)) for r in report.models.itertuples()
               for c in ("accuracy", "sid_last", "robustness_l2") if hasattr(r, c) and pd.notna(getattr(r, c))}
    for logger in loggers:
        logger.log_metrics(scalars)
        if not isinstance(logger, WandbLogger):
            logger.save()
            continue
        run = logger.experiment
        data: dict[str, Any] = {"report/models": wandb.Table(dataframe=report.models),
                                "report/layers": wandb.Table(dataframe=report.layers)}
        for col, (short, ylabel) in QUANTITIES.items():
            if report.layers[col].isna().all():
                continue
            groups = list(report.layers.groupby("model", sort=False))
            data[f"report/{short}_curves"] = wandb.plot.line_series(
                xs=groups[0][1].layer_index.tolist(), ys=[g[col].tolist() for _, g in groups],
                keys=[m for m, _ in groups], title=f"{study}: {ylabel} by layer", xname="layer")
        data["report/figures"] = [wandb.Image(str(p)) for p in report.figures]
        data["report/verdicts"] = wandb.Table(columns=["claim", "reproduced", "paper", "measured"], data=[
            [v.claim, str(v.reproduced), v.paper, v.measured] for v in report.verdicts])
        run.log(data)
        run.summary["verdicts"] = "\n".join(v.line() for v in report.verdicts)
        run.finish()
