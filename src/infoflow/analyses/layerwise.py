"""``python evaluate.py analysis=layerwise``: SID, RU and concentration by layer, as curves, maps, CSV and W&B.

For the config's model (or each {name, model, weights} entry of ``analysis.compare``, on one plot) and the
first ``analysis.num_images`` test images, at every conv layer or ``analysis.layers``:

- SID: `layerwise_sid` with the reduced `SIDConfig` of ``analysis.sid``; delta_f² estimated on
  ``analysis.delta_f2.images`` test images and cached under ``analysis.cache_dir``;
- RU: `layerwise_ru` with the decoders of ``python train.py task=decoder`` (``analysis.decoder_dir``).
  ``analysis.ru``: null computes it when every layer has a decoder (else a note names the commands),
  true requires it (a missing decoder is an error naming the command), false skips it;
- concentration: mean SID outside the object minus inside (masks, else boxes); NaN, reported as not
  available, on data without either (CIFAR-10).

All values are per pixel of the [0, 1] input, in nats (SID/RU ``per_pixel``), so layers and networks compare.
The constraint ratio E||h(x') - f||² / (alpha delta_f²) is reported on the projection's noise draws and on
fresh ones (``constraint_ratio``, ``constraint_ratio_fresh``, with standard errors); the fresh one decides
``converged``.

Uncertainty (`infoflow.layer_report`, `infoflow.stats`): SID, RU and concentration are the mean over the
images with an ``analysis.bootstrap.level`` interval (a seeded bootstrap over images, ``analysis.bootstrap``);
with several models, the paired difference of every model from the first, on the same images, with its
interval. Writes ``layerwise.csv`` (one row per model x image x layer), ``layerwise_summary.csv`` and ``.md``
(per model and layer: ``<q>``, ``<q>_low``, ``<q>_high``; diagnostic means; the fresh ratio also as min and
max over images), ``layerwise_differences.csv`` and ``.md`` (``<q>_diff`` with ``_low``, ``_high``),
``layerwise/{sid,ru,concentration}[_diff]_curves.png`` (bands: the intervals; x ticks: the layer names) and
``layerwise/{sid,ru}_maps_<model>.png`` (one shared colour scale per figure, with a colour bar in nats per
pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from infoflow.analyses import ANALYSES
from infoflow.analyses.common import (
    bootstrap_settings,
    evaluation_batches,
    log_results,
    output_dir,
    provenance,
)
from infoflow.builders import build_datamodule, build_model
from infoflow.data.base import ImageDataModule
from infoflow.discarding import (
    SIDConfig,
    decoder_path,
    layerwise_ru,
    layerwise_sid,
    load_decoders,
    object_mask,
    resolve_layers,
)
from infoflow.discarding.decoder import TRAIN_COMMAND
from infoflow.layer_report import layer_rows, paired_differences, summarize
from infoflow.models.zoo import ZooModel, get_model
from infoflow.utils.tables import to_markdown_table, write_markdown
from infoflow.viz import plot_grid, plot_layer_curves

#: per-layer quantities: CSV column -> (curve file, axis label)
_CURVES = {
    "sid_per_pixel": ("sid", "SID [nats/pixel]"),
    "ru_per_pixel": ("ru", "RU [nats/pixel]"),
    "concentration": ("concentration", "concentration [nats/pixel]"),
}


def sid_config(cfg: DictConfig) -> SIDConfig:
    """`SIDConfig` from a config mapping of its fields (missing fields keep the defaults)."""
    return SIDConfig(**OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]


def first_images(dm: ImageDataModule, num_images: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The first `num_images` test images as one batch (tensors concatenated)."""
    batches = list(evaluation_batches(dm, num_images, device))
    return {k: torch.cat([b[k] for b in batches]) for k, v in batches[0].items() if isinstance(v, torch.Tensor)}


def compared_models(cfg: DictConfig, dm: ImageDataModule) -> list[tuple[str, ZooModel]]:
    """(label, model) of each ``analysis.compare`` entry, or of the config's model and weights."""
    if not cfg.analysis.compare:
        return [(f"{cfg.model.name}", build_model(cfg, dm))]
    return [
        (e.get("name") or f"{e.model}:{e.weights}",
         get_model(e.model, weights=str(e.weights), num_classes=e.get("num_classes") or dm.num_classes,
                   input_size=dm.input_size))
        for e in cfg.analysis.compare
    ]


def want_ru(label: str, model: ZooModel, layers: Sequence[str], decoder_dir: str, ru: bool | None) -> bool:
    """Whether to compute RU: `ru` if set, else whether every layer has a trained decoder (with a note if not)."""
    if ru is not None:
        return ru
    missing = [
        layer for layer in layers
        if not decoder_path(decoder_dir, model.name, model.weights, layer, model.input_size).is_file()
    ]
    if missing:
        commands = "\n  ".join(TRAIN_COMMAND.format(model=model.name, layer=m, weights=model.weights) for m in missing)
        print(f"RU skipped for {label}: no trained decoder in {decoder_dir} for {missing}. Train them with:\n  {commands}")
    return not missing


def curve_figures(summary_df: pd.DataFrame, diffs: pd.DataFrame, out: Path, prov: str, level: float) -> list[Path]:
    """Curves over the layers (x ticks named) of each quantity per model with interval bands, and of each
    model's paired difference from the first when there are several models."""
    layers = list(dict.fromkeys(summary_df.sort_values("layer_index")["layer"]))
    band = f"{level:.0%} interval over images"
    pngs = []
    for table, suffix, what in ((summary_df, "", ""), (diffs, "_diff", " minus the first model")):
        if table.empty:
            continue
        for col, (stem, ylabel) in _CURVES.items():
            q = f"{col}{suffix}"
            if q not in table or not table[q].notna().any():
                continue
            curves = {}
            for m, g in table.groupby("model", sort=False):
                g = g.set_index("layer").reindex(layers)
                curves[m] = (g[q].to_numpy(float), g[f"{q}_low"].to_numpy(float), g[f"{q}_high"].to_numpy(float))
            name = ylabel.split(" ")[0]
            pngs.append(plot_layer_curves(curves, layers, out / f"{stem}{suffix}_curves.png", ylabel,
                                          f"{name}{what} by layer, mean over images", prov, band))
    return pngs


@ANALYSES.register("layerwise")
def run(cfg: DictConfig) -> dict[str, Any]:
    an = cfg.analysis
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = build_datamodule(cfg)
    models = compared_models(cfg, dm)
    if an.ru:  # required: every decoder must be there before the (long) SID work starts
        for _, model in models:
            load_decoders(an.decoder_dir, model, list(resolve_layers(model, an.layers)))
    batch = first_images(dm, max(an.num_images, an.delta_f2.images), device)
    images01 = dm.denormalize(batch["image"])
    x01, labels = images01[: an.num_images], batch["label"][: an.num_images].cpu()
    mask = object_mask(batch)
    mask = mask[: an.num_images].cpu() if mask is not None else None
    if mask is None:
        print("concentration: not available (the data has neither object masks nor boxes)")
    out, prov, config = output_dir(cfg) / "layerwise", provenance(cfg), sid_config(an.sid)
    boot = bootstrap_settings(an.bootstrap)
    rows: list[dict[str, Any]] = []
    pngs: list = []
    shown = slice(0, an.num_maps)
    for label, model in models:
        model.module.to(device)
        layers = list(resolve_layers(model, an.layers))
        sid = layerwise_sid(
            model, x01, dm.mean, dm.std, layers, config, cache_dir=an.cache_dir, delta_f2_images=images01,
            tau=an.delta_f2.tau, delta_f2_samples=an.delta_f2.samples, precision=cfg.get("precision", 32),
        )
        ru = (
            layerwise_ru(model, x01, sid, dm.mean, dm.std, an.decoder_dir, an.ru_samples, cfg.seed,
                         precision=cfg.get("precision", 32))
            if want_ru(label, model, layers, an.decoder_dir, an.ru) else None
        )
        rows += layer_rows(label, sid, ru, mask, labels)
        for kind, result in (("sid", sid), ("ru", ru)):
            if result is not None:
                maps = {f"{kind.upper()} {layer}": result.layer(layer)[shown] for layer in layers}
                titles = [dm.class_names[int(t)] for t in labels[shown]]
                pngs.append(plot_grid(x01[shown].cpu(), maps, out / f"{kind}_maps_{label}.png", prov, titles,
                                      units=f"{kind.upper()} [nats/pixel]"))
    df = pd.DataFrame(rows)
    summary_df = summarize(df, boot)
    diffs = paired_differences(df, boot)
    pngs += curve_figures(summary_df, diffs, out, prov, boot.level)
    n = len(x01)
    how = (f"{boot.level:.0%} intervals (`_low`, `_high`): {boot.method} bootstrap over the {n} images "
           f"({boot.n_resamples} resamples, seed {boot.seed})" if boot.method != "t" else
           f"{boot.level:.0%} Student t intervals over the {n} images")
    note = (f"Means over {n} test images with {how}; SID, RU and concentration in nats per pixel of the [0, 1] "
            f"input. constraint_ratio: E||h(x') - f||² / (alpha delta_f²) on the projection's noise draws; "
            f"constraint_ratio_fresh (mean, min, max over images): on independent draws, which must be within "
            f"{config.tol:.0%} of 1 (`converged`: the fraction of images where it is). Config: `config.yaml`.")
    write_markdown(summary_df, output_dir(cfg) / "layerwise_summary.md", "Layer-wise information discarding", note)
    print(f"layer-wise values (means over {n} images with {boot.level:.0%} intervals, nats per pixel; "
          "constraint ratios in-sample and fresh):")
    print(to_markdown_table(summary_df))
    tables = {"layerwise": df, "layerwise_summary": summary_df}
    if not diffs.empty:
        reference = diffs["reference"].iloc[0]
        write_markdown(diffs, output_dir(cfg) / "layerwise_differences.md",
                       f"Paired differences from {reference}",
                       f"mean over the same {n} images of (model - {reference}) with {how}; nats per pixel.")
        print(f"paired differences from {reference} ({boot.level:.0%} intervals over the same {n} images):")
        print(to_markdown_table(diffs))
        tables["layerwise_differences"] = diffs
    summary: dict[str, Any] = {"num_images": n, "level": boot.level}
    for table in (summary_df, diffs):
        for r in table.to_dict("records"):
            for col, value in r.items():
                if col in ("model", "reference", "layer", "layer_index", "images", "image"):
                    continue
                if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
                    summary[f"{r['model']}/{r['layer']}/{col}"] = float(value)
    print(f"wrote {len(pngs)} figures to {out}, {', '.join(f'{t}.csv' for t in tables)} and .md")
    log_results(cfg, tables, {"layerwise": pngs}, summary)
    return summary
