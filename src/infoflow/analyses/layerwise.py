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
``converged``. Writes ``layerwise.csv`` (one row per model x image x layer), ``layerwise_summary.csv`` and
``.md`` (means per model and layer; the fresh ratio also as min and max over images),
``layerwise/{sid,ru,concentration}_curves.png`` and ``layerwise/{sid,ru}_maps_<model>.png`` (one shared colour
scale per figure, with a colour bar in nats per pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from infoflow.analyses import ANALYSES
from infoflow.analyses.common import evaluation_batches, log_results, output_dir, provenance
from infoflow.builders import build_datamodule, build_model
from infoflow.data.base import ImageDataModule
from infoflow.discarding import (
    RUResult,
    SIDConfig,
    SIDResult,
    concentration,
    decoder_path,
    layerwise_ru,
    layerwise_sid,
    load_decoders,
    object_mask,
    resolve_layers,
)
from infoflow.discarding.decoder import TRAIN_COMMAND
from infoflow.models.zoo import ZooModel, get_model
from infoflow.utils.tables import to_markdown_table, write_markdown
from infoflow.viz import plot_curves, plot_grid

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


def layer_rows(
    label: str,
    sid: SIDResult,
    ru: RUResult | None,
    mask: torch.Tensor | None,
    labels: torch.Tensor,
) -> list[dict[str, Any]]:
    """One row per image x layer: SID (per pixel and total), RU and concentration in nats; the constraint ratio
    E||h(x') - f||² / (alpha delta_f²) on the projection's draws (in-sample) and on fresh draws, with their
    Monte-Carlo standard errors; `converged` is the fresh ratio within the tolerance.

    Args:
        mask: (N, H, W) object mask at the image size, or None (concentration NaN).
        labels: (N,) class labels.
    """
    conc = concentration(sid.maps, mask) if mask is not None else torch.full(sid.per_pixel.shape, float("nan"))
    rows = []
    for i in range(sid.per_pixel.shape[0]):
        for j, layer in enumerate(sid.layers):
            rows.append({
                "model": label, "image": i, "label": int(labels[i]), "layer": layer, "layer_index": j + 1,
                "sid_per_pixel": float(sid.per_pixel[i, j]), "sid_total": float(sid.total[i, j]),
                "constraint_ratio": float(sid.ratio[i, j]), "constraint_ratio_se": float(sid.ratio_se[i, j]),
                "constraint_ratio_fresh": float(sid.ratio_fresh[i, j]),
                "constraint_ratio_fresh_se": float(sid.ratio_fresh_se[i, j]),
                "constraint_draws": int(sid.draws[i, j]), "converged": bool(sid.converged[i, j]),
                "ru_per_pixel": float(ru.per_pixel[i, j]) if ru is not None else float("nan"),
                "concentration": float(conc[i, j]),
            })
    return rows


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Means over images per (model, layer), in layer order; the fresh constraint ratio also as min and max."""
    cols = ["sid_per_pixel", "ru_per_pixel", "concentration", "sid_total", "constraint_ratio",
            "constraint_ratio_fresh", "converged"]
    groups = df.groupby(["model", "layer_index", "layer"], sort=True)
    out = groups[cols].mean()
    fresh = groups["constraint_ratio_fresh"]
    out.insert(out.columns.get_loc("constraint_ratio_fresh") + 1, "constraint_ratio_fresh_min", fresh.min())
    out.insert(out.columns.get_loc("constraint_ratio_fresh_min") + 1, "constraint_ratio_fresh_max", fresh.max())
    return out.reset_index()


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
    summary_df = summarize(df)
    for col, (stem, ylabel) in _CURVES.items():
        groups = {m: g for m, g in summary_df.groupby("model", sort=False) if g[col].notna().any()}
        if groups:
            curves = {m: (g["layer_index"].to_numpy(), g[col].to_numpy()) for m, g in groups.items()}
            first = next(iter(groups.values()))
            names = ", ".join(f"{i}={n}" for i, n in zip(first["layer_index"], first["layer"], strict=True))
            pngs.append(plot_curves(curves, out / f"{stem}_curves.png", "conv layer", ylabel,
                                    f"{ylabel.split(' ')[0]} by layer ({names})", prov))
    note = (f"Means over {len(x01)} test images; SID, RU and concentration in nats per pixel of the [0, 1] "
            f"input. constraint_ratio: E||h(x') - f||² / (alpha delta_f²) on the projection's noise draws; "
            f"constraint_ratio_fresh (mean, min, max over images): on independent draws, which must be within "
            f"{config.tol:.0%} of 1 (`converged`: the fraction of images where it is). Config: `config.yaml`.")
    write_markdown(summary_df, output_dir(cfg) / "layerwise_summary.md", "Layer-wise information discarding", note)
    print(f"layer-wise values (means over {len(x01)} images, nats per pixel; constraint ratios in-sample and fresh):")
    print(to_markdown_table(summary_df))
    summary: dict[str, Any] = {"num_images": len(x01)}
    for r in summary_df.itertuples(index=False):
        for col in [*_CURVES, "constraint_ratio", "constraint_ratio_fresh", "constraint_ratio_fresh_min",
                    "constraint_ratio_fresh_max"]:
            value = getattr(r, col)
            if not np.isnan(value):
                summary[f"{r.model}/{r.layer}/{col}"] = float(value)
    print(f"wrote {len(pngs)} figures to {out}, layerwise.csv, layerwise_summary.csv and .md")
    log_results(cfg, {"layerwise": df, "layerwise_summary": summary_df}, {"layerwise": pngs}, summary)
    return summary
