"""The layer-wise rows and tables, built one way for `analysis=layerwise` and the `layerwise` callback.

`layer_rows` gives one row per image x layer from a `SIDResult` (and RU, and the object mask). From these
per-image rows (one per image x layer, with a ``layer_index`` from 1 and a ``layer`` name),
`summarize` gives one row per group (e.g. model x layer) with, for each quantity of `INTERVAL_COLUMNS`, the
mean over images and its interval (``<q>_low``, ``<q>_high``; `infoflow.stats.mean_interval`, a seeded
bootstrap over images), plus plain means of the diagnostic columns. `paired_differences` gives, for every
model after the first, mean(model - first) over the same images per layer, with its interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from infoflow.discarding import RUResult, SIDResult, concentration
from infoflow.stats import BootstrapSettings, mean_interval, paired_difference

#: quantities reported as a mean over images with an interval (nats per pixel)
INTERVAL_COLUMNS = ("sid_per_pixel", "ru_per_pixel", "concentration")

#: diagnostic columns reported as plain means over images
MEAN_COLUMNS = ("sid_total", "constraint_ratio", "constraint_ratio_fresh", "converged")


def layer_rows(
    label: str,
    sid: SIDResult,
    ru: RUResult | None,
    mask: torch.Tensor | None,
    labels: torch.Tensor,
    images: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per image x layer: SID (per pixel and total), RU and concentration in nats; the constraint ratio
    E||h(x') - f||² / (alpha delta_f²) on the projection's draws (in-sample) and on fresh draws, with their
    Monte-Carlo standard errors; `converged` is the fresh ratio within the tolerance.

    Args:
        mask: (N, H, W) object mask at the image size, or None (concentration NaN).
        labels: (N,) class labels.
        images: (N,) the images' indices in the rows (default 0..N-1).
    """
    conc = concentration(sid.maps, mask) if mask is not None else torch.full(sid.per_pixel.shape, float("nan"))
    index = list(images) if images is not None else list(range(sid.per_pixel.shape[0]))
    rows = []
    for i in range(sid.per_pixel.shape[0]):
        for j, layer in enumerate(sid.layers):
            rows.append({
                "model": label, "image": int(index[i]), "label": int(labels[i]), "layer": layer,
                "layer_index": j + 1,
                "sid_per_pixel": float(sid.per_pixel[i, j]), "sid_total": float(sid.total[i, j]),
                "constraint_ratio": float(sid.ratio[i, j]), "constraint_ratio_se": float(sid.ratio_se[i, j]),
                "constraint_ratio_fresh": float(sid.ratio_fresh[i, j]),
                "constraint_ratio_fresh_se": float(sid.ratio_fresh_se[i, j]),
                "constraint_draws": int(sid.draws[i, j]), "converged": bool(sid.converged[i, j]),
                "ru_per_pixel": float(ru.per_pixel[i, j]) if ru is not None else float("nan"),
                "concentration": float(conc[i, j]),
            })
    return rows


def interval_cells(values: np.ndarray, q: str, settings: BootstrapSettings, paired: np.ndarray | None = None
                    ) -> dict[str, float]:
    """{q, q_low, q_high} of the finite `values` (NaN when none), or of values - paired when given."""
    ok = np.isfinite(values) if paired is None else np.isfinite(values) & np.isfinite(paired)
    if not ok.any():
        return {q: np.nan, f"{q}_low": np.nan, f"{q}_high": np.nan}
    kw = {"level": settings.level, "seed": settings.seed, "method": settings.method,
          "n_resamples": settings.n_resamples}
    iv = mean_interval(values[ok], **kw) if paired is None else paired_difference(paired[ok], values[ok], **kw)
    return iv.as_dict(q)


def summarize(
    df: pd.DataFrame,
    settings: BootstrapSettings,
    by: Sequence[str] = ("model", "layer_index", "layer"),
    intervals: Sequence[str] = INTERVAL_COLUMNS,
    means: Sequence[str] = MEAN_COLUMNS,
) -> pd.DataFrame:
    """One row per `by` group, sorted: for each of `intervals` present in `df`, the mean over its images and
    the `settings.level` interval (``_low``, ``_high``); plain means of `means`; ``images`` (the count); and,
    when the column is there, the fresh constraint ratio's min and max over images."""
    rows = []
    for key, g in df.groupby(list(by), sort=True):
        row: dict[str, object] = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for q in intervals:
            if q in g:
                row.update(interval_cells(g[q].to_numpy(dtype=float), q, settings))
        for m in means:
            if m in g:
                row[m] = float(g[m].astype(float).mean())
        if "constraint_ratio_fresh" in g:
            row["constraint_ratio_fresh_min"] = float(g["constraint_ratio_fresh"].min())
            row["constraint_ratio_fresh_max"] = float(g["constraint_ratio_fresh"].max())
        row["images"] = int(g["image"].nunique()) if "image" in g else len(g)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(
    df: pd.DataFrame, settings: BootstrapSettings, intervals: Sequence[str] = INTERVAL_COLUMNS
) -> pd.DataFrame:
    """For every model after the first (in order of appearance) and layer the two share: mean over the same
    images of (model - first) for each of `intervals`, with its interval (``<q>_diff``, ``_low``, ``_high``)."""
    models = list(dict.fromkeys(df["model"]))
    if len(models) < 2:
        return pd.DataFrame()
    ref = df[df["model"] == models[0]].set_index(["layer", "image"])
    rows = []
    for model in models[1:]:
        other = df[df["model"] == model].set_index(["layer", "image"])
        for layer in dict.fromkeys(other.index.get_level_values("layer")):
            if layer not in ref.index.get_level_values("layer"):
                continue
            a, b = ref.loc[layer], other.loc[layer]
            images = a.index.intersection(b.index)
            row: dict[str, object] = {"model": model, "reference": models[0], "layer": layer,
                                      "layer_index": int(b.loc[images[0], "layer_index"]) if len(images) else 0,
                                      "images": len(images)}
            for q in intervals:
                if q in df:
                    row.update(interval_cells(b.loc[images, q].to_numpy(dtype=float), f"{q}_diff", settings,
                                               paired=a.loc[images, q].to_numpy(dtype=float)))
            rows.append(row)
    return pd.DataFrame(rows)
