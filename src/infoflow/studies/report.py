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
from infoflow.studies.verdicts import VERDICTS, Verdict, arm_values, seed_mean
from infoflow.utils.checkpoint import atomic_write
from infoflow.utils.tables import to_markdown_table, write_csv

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
    keep = ["model", "epoch", *(["image"] if "image" in table else []), "layer_index", "layer",
            *[c for c in QUANTITIES if c in table]]
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


def layer_table(cells: pd.DataFrame, order: Sequence[str], level: float = 0.95) -> pd.DataFrame:
    """One row per (model, layer): each quantity's mean over seeds and images with its interval (``<q>_low``,
    ``<q>_high``; `seed_mean`), its seed spread and image spread, and the counts of seeds and images."""
    rows = []
    layers = cells.drop_duplicates("layer").sort_values("layer_index")
    for m in order:
        for r in layers.itertuples():
            row: dict[str, Any] = {"model": m, "layer_index": int(r.layer_index), "layer": r.layer}
            for col, (short, _) in QUANTITIES.items():
                q = {"SID": "sid", "RU": "ru", "conc": "concentration"}[short]
                by_seed = arm_values(cells, m, q, [r.layer]) if col in cells else {}
                e = seed_mean([by_seed[s] for s in sorted(by_seed)], level)
                row.update({col: e.estimate, f"{col}_low": e.low, f"{col}_high": e.high,
                            f"{col}_seed_sd": e.seed_spread, f"{col}_image_se": e.image_spread})
                row.update({"seeds": e.seeds, "images": e.images} if col == "sid_per_pixel" else {})
            rows.append(row)
    return pd.DataFrame(rows)


def wide(models: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """One row per model (means over seeds; ``accuracy_min``: the lowest seed) with one column per quantity and
    layer (``SID conv1``, its interval as ``[low, high]``), quantities never measured left out."""
    numeric = models.drop(columns=["seed"], errors="ignore")
    groups = numeric.groupby("model", sort=False)
    out = groups.mean(numeric_only=True).reset_index()
    if "accuracy" in numeric:
        out.insert(2, "accuracy_min", out.model.map(groups.accuracy.min()))
    out.insert(1, "seeds", out.model.map(groups.size()))
    for col, (short, _) in QUANTITIES.items():
        if col not in layers or layers[col].isna().all():
            continue
        for layer in layers.drop_duplicates("layer").sort_values("layer_index").layer:
            sub = layers[layers.layer == layer].set_index("model")
            out[f"{short} {layer}"] = out.model.map(sub[col])
            out[f"{short} {layer} interval"] = out.model.map(
                lambda m, s=sub, c=col: f"[{s.loc[m, c + '_low']:.3f}, {s.loc[m, c + '_high']:.3f}]" if m in s.index
                else "")
    return out


def steps_check(cells: pd.DataFrame, doubled: pd.DataFrame | None, seed: int, level: float = 0.95,
                missing: str = "") -> str:
    """The SID steps check: the layer-wise table `doubled`, measured with twice the SID steps on seed `seed`
    (None: not run, `missing` says why), against the same seed's means in `cells`; passes when no (model, layer)
    mean moves by more than half its interval's width (the images' interval on that seed)."""
    if doubled is None:
        return f"SID steps check: not run ({missing})."
    base = cells[cells.seed == seed]
    worst, where, ok, compared = 0.0, "", True, 0
    for (m, layer), g in base.groupby(["model", "layer"]):
        e = seed_mean([g.sid_per_pixel.to_numpy()], level)
        other = doubled[(doubled.model == m) & (doubled.layer == layer)].sid_per_pixel
        if other.empty or not e.finite:
            continue
        compared += 1
        moved = abs(float(other.mean()) - e.estimate) / max((e.high - e.low) / 2, 1e-12)
        ok &= moved <= 1.0
        if moved >= worst:
            worst, where = moved, f"{m} {layer}"
    if not compared:
        return "SID steps check: FAILED (the doubled table shares no (model, layer) with the study's)."
    return (f"SID steps check (seed {seed}, twice the steps, {compared} model x layer means): the largest move of "
            f"a layer's mean is {worst:.2f} of half its interval's width, at {where}: "
            f"{'PASSED' if ok else 'FAILED (raise the SID steps)'}.")


def curves(layers: pd.DataFrame, out: Path, title: str, provenance: str) -> list[Path]:
    """The layer-wise curves of every model overlaid (x axis: the layer names), one PNG per measured quantity,
    with each point's interval as a band."""
    paths = []
    for col, (short, ylabel) in QUANTITIES.items():
        if col not in layers or layers[col].isna().all():
            continue
        data = {m: (g.layer_index.to_numpy(), g[col].to_numpy())
                for m, g in layers.sort_values("layer_index").groupby("model", sort=False)}
        bands = {m: (g[f"{col}_low"].to_numpy(), g[f"{col}_high"].to_numpy())
                 for m, g in layers.sort_values("layer_index").groupby("model", sort=False)}
        names = layers.drop_duplicates("layer_index").sort_values("layer_index").layer.tolist()
        stem = {"SID": "sid", "RU": "ru", "conc": "concentration"}[short]
        paths.append(_plot(data, bands, names, out / f"report_{stem}.png", ylabel, f"{title}: {short}", provenance))
    return paths


def _plot(data: Mapping[str, tuple[np.ndarray, np.ndarray]], bands: Mapping[str, tuple[np.ndarray, np.ndarray]],
          names: Sequence[str], path: Path, ylabel: str, title: str, provenance: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, (x, y) in data.items():
        (line,) = ax.plot(x, y, marker="o", label=m)
        lo, hi = bands[m]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.text(0.01, 0.01, "bands: 95 % intervals over seeds", fontsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Description": provenance[:2000]})
    plt.close(fig)
    return path


def build_report(study: str, out: str | Path, models: pd.DataFrame, cells: pd.DataFrame,
                 claims: Mapping[str, Any], notes: Sequence[str] = (), provenance: str = "") -> Report:
    """Write the report files of `study` into `out` (module docstring) and return them.

    Args:
        models: one row per model and seed (`model_table` with a ``seed`` column; without one: seed 0).
        cells: one row per model x seed x image x layer (without ``seed``/``image`` columns: one each).
    """
    out = Path(out)
    models = models if "seed" in models else models.assign(seed=0)
    cells = cells if "seed" in cells else cells.assign(seed=0)
    cells = cells if "image" in cells else cells.assign(image=0)
    order = list(dict.fromkeys(models.model))
    cells = cells[cells.model.isin(order)].reset_index(drop=True)
    level = float(claims.get("level", 0.95))
    verdicts = VERDICTS.get(study)(cells, models, dict(claims))
    long = layer_table(cells, order, level)
    table = wide(models, long)
    write_csv(table, out / "report.csv")
    write_csv(long, out / "report_layers.csv")
    write_csv(models, out / "report_seeds.csv")
    figures = curves(long, out, study, provenance)
    seeds, images = int(long.seeds.max()), int(long.images.min())
    text = "\n\n".join([
        f"# Study: {study}",
        "SID, RU and concentration in nats per input pixel; higher SID: more input information discarded. "
        f"Each value is the mean over {seeds} training seed(s) of the mean over {images} analysed images (test "
        f"images; in a study over epochs the layerwise callback's subset), with its {level:.0%} interval "
        "(Student's t over the seed means; over the images with one seed); seed_sd: the spread of the seed means, "
        "image_se: the images' standard error within a seed. NaN: not measured.",
        "## Models (means over seeds)\n\n" + to_markdown_table(table),
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
        data["report/verdicts"] = wandb.Table(
            columns=["claim", "verdict", "effect", "low", "high", "rule", "paper", "measured"],
            data=[[v.claim, v.word, *((v.effect.estimate, v.effect.low, v.effect.high) if v.effect else (None,) * 3),
                   v.rule, v.paper, v.measured] for v in report.verdicts])
        run.log(data)
        run.summary["verdicts"] = "\n".join(v.line() for v in report.verdicts)
        run.finish()
