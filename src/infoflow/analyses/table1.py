"""``python evaluate.py experiment=table1``: every attribution method x the paper's metrics (its Table 1).

Rows come from ``analysis.rows``: a table label -> a method config of ``conf/method`` (composed with the
run by the defaults list of ``conf/analysis/table1.yaml``) with overrides of its kwargs (e.g. IBA at beta
1, 10, 100). The methods x metrics run as a Lightning
test loop (`AttributionEvaluation`, trainer from ``cfg.trainer``). Rank 0 writes into the run directory
(each figure carries the resolved config; ``config.yaml`` sits next to the tables) and to W&B:
- ``table1.csv`` / ``table1.md`` (also printed): a row per method; degradation score (area between LeRF and
  MoRF) at each tile size, the bounding-box ratio (when the data has ``box_mask``), the common metrics
  (`COLUMNS`: insertion and deletion AUC, ROAD, pointing game, energy pointing game, mask ratio, Gini,
  random-logit SSIM, infidelity, max-sensitivity; the perturbation ones on ``analysis.subset_images``
  images), the mean Sensitivity-n correlation per tile size, the mean sanity SSIM and the attribution's
  milliseconds per image; plus t1 and b in the CSV;
- ``curves.csv`` and ``degradation_<tile>.png`` (mean MoRF/LeRF per method, figs. 7, 11, 12),
  ``insertion_deletion.png`` and ``road.png`` (mean target probability curves),
  ``sensitivity_<tile>.png`` (fig. 6), ``sanity_ssim.png`` (SSIM per randomised layer);
- ``heatmaps_grid.png``: every method on the same test images (figs. 5, 8), one colour scale and labelled
  bar (the method's unit) per method.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from infoflow.analyses import ANALYSES
from infoflow.analyses.attribution_metrics import AttributionEvaluation, MetricSettings
from infoflow.analyses.common import evaluation_batches, log_results, output_dir, provenance
from infoflow.analyses.sharded_images import evaluation_loader
from infoflow.builders import build_datamodule, build_method, build_model
from infoflow.data.base import ImageDataModule
from infoflow.interface import Attribution, unsupported
from infoflow.metrics.sanity import resettable_layers
from infoflow.models.zoo import ZooModel
from infoflow.utils.tables import print_table, write_markdown
from infoflow.viz import plot_curves, plot_grid


def row_configs(cfg: DictConfig, dm: ImageDataModule, model: ZooModel | None = None,
                skipped: dict[str, str] | None = None) -> dict[str, DictConfig]:
    """Run configs (``cfg`` with its ``method`` replaced) for each row of ``analysis.rows`` that applies.

    The rows' method configs are composed with the run (the ``defaults`` of ``conf/analysis/table1.yaml``).
    ``analysis.only`` (if set) selects rows; a row with ``requires: KEY`` runs only when ``cfg.KEY`` is set;
    the ground-truth oracle only when the data has its mask; a method that cannot explain `model`
    (`Attribution.unsupported`: LRP on a transformer, attention rollout on a CNN) is left out, with its
    reason in `skipped` (row label -> reason)."""
    out = {}
    for label, row in cfg.analysis.rows.items():
        if cfg.analysis.only is not None and label not in cfg.analysis.only:
            continue
        method = row.copy()
        OmegaConf.set_struct(method, False)
        required = method.pop("requires", None)
        if required is not None and cfg.get(required) is None:
            continue
        key = method.get("key")
        if method.name == "ground-truth" and not (dm.has_masks if key == "mask" else dm.has_boxes):
            continue
        reason = None if model is None else unsupported(method.name, model)
        if reason is not None:
            if skipped is not None:
                skipped[str(label)] = reason
            continue
        run = cfg.copy()
        OmegaConf.set_struct(run, False)
        run.method = method
        out[str(label)] = run
    return out


def _method_factory(rows: dict[str, DictConfig], dm: ImageDataModule, sanity_overrides: DictConfig):
    """``make(label, model, for_sanity)``: the row's method for `model`, fitted on the training split; for a
    randomised model (sanity check) with `sanity_overrides` applied to the kwargs the method has."""

    def make(label: str, model: ZooModel, for_sanity: bool) -> Attribution:
        run = rows[label]
        if for_sanity:
            run = run.copy()
            for key, value in sanity_overrides.items():
                if key in run.method:
                    run.method[key] = value
        return build_method(run, model, dm)

    return make


def _settings(cfg: DictConfig, model: ZooModel) -> MetricSettings:
    a = cfg.analysis

    def kwargs(group: DictConfig | None, *drop: str) -> dict[str, Any] | None:
        if group is None:
            return None
        return {k: v for k, v in OmegaConf.to_container(group, resolve=True).items() if k not in drop}

    precision = {"precision": str(cfg.get("precision", 32))}  # the perturbation passes (bf16 where asked)
    return MetricSettings(
        degradation_tiles=list(a.degradation.tile_sizes), degradation={**kwargs(a.degradation, "tile_sizes"), **precision},
        sensitivity_tiles=list(a.sensitivity.tile_sizes), sensitivity={**kwargs(a.sensitivity, "tile_sizes"), **precision},
        bbox=kwargs(a.bbox), mask_ratio=kwargs(a.mask_ratio), pointing=kwargs(a.pointing),
        sparseness=bool(a.sparseness), insertion_deletion=kwargs(a.insertion_deletion), road=kwargs(a.road),
        infidelity=kwargs(a.infidelity), max_sensitivity=kwargs(a.max_sensitivity),
        subset_images=int(a.subset_images), sanity_images=int(a.sanity.num_images),
        sanity_layers=list(a.sanity.layers or resettable_layers(model)), signed=list(a.sanity.signed),
        win_size=int(a.sanity.win_size), random_logit=bool(a.sanity.random_logit), seed=int(cfg.seed),
    )


@ANALYSES.register("table1")
def run(cfg: DictConfig) -> dict[str, Any]:
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    skipped: dict[str, str] = {}
    rows = row_configs(cfg, dm, model, skipped)
    for label, reason in skipped.items():
        print(f"table1: row {label} left out: {reason}")
    settings = _settings(cfg, model)
    module = AttributionEvaluation(
        model, list(rows), _method_factory(rows, dm, cfg.analysis.sanity.method_overrides), settings,
        boxes=dm.has_boxes, masks=dm.has_masks, target=cfg.analysis.target, seed=cfg.seed,
        grid_batch=next(evaluation_batches(dm, cfg.analysis.grid_images)),
    )
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False,
                                      enable_model_summary=False, inference_mode=False)
    trainer.test(module, dataloaders=evaluation_loader(dm, cfg.analysis.num_images), verbose=False)
    if not trainer.is_global_zero:
        return {}
    return write_results(cfg, dm, module, sorted(skipped))


def write_results(cfg: DictConfig, dm: ImageDataModule, module: AttributionEvaluation,
                  skipped: list[str] | None = None) -> dict[str, Any]:
    """Tables, curves and the heatmap grid from `module.results` (rank 0)."""
    out, prov, res = output_dir(cfg), provenance(cfg), module.results
    tag = cfg.model.name
    table, full, curves = [], [], []
    for label, r in res.items():
        row: dict[str, Any] = {"method": label}
        extra: dict[str, Any] = {"method": label, "model": cfg.model.name, "weights": str(cfg.weights),
                                 "images": cfg.analysis.num_images}
        for tile, d in r["degradation"].items():
            row[f"{tag} degradation {tile}x{tile}"] = float(d.score)
            extra |= {f"degradation_{tile}": float(d.score), f"t1_{tile}": float(d.t1), f"b_{tile}": float(d.b)}
            for kind in ("morf", "lerf"):
                curves += [{"method": label, "curve": f"{kind}_{tile}", "x": float(x), "y": float(y)}
                           for x, y in zip(d.fractions, getattr(d, kind), strict=True)]
        if "bbox" in r:
            row[f"{tag} bbox ratio"] = extra["bbox_ratio"] = float(r["bbox"])
        for name, key, column, value in COLUMNS:
            if name in r:
                row[column] = extra[key] = float("nan") if r[name] is None else float(value(r[name]))
        curves += _curve_rows(label, r)
        extra["seconds_per_image"] = float(r["seconds"])
        for tile, s in r["sensitivity"].items():
            row[f"Sensitivity-n {tile}x{tile} (mean over n)"] = extra[f"sensitivity_{tile}_mean"] = \
                float(s.correlation.mean())
            curves += [{"method": label, "curve": f"sensitivity_{tile}", "x": float(n), "y": float(c)}
                       for n, c in zip(s.n, s.correlation, strict=True)]
        if "sanity" in r:
            layers, ssim = r["sanity"]
            row["sanity SSIM (mean)"] = extra["sanity_ssim_mean"] = float(ssim.nanmean())
            curves += [{"method": label, "curve": "sanity_ssim", "x": float(i), "y": float(v), "layer": layer}
                       for i, (layer, v) in enumerate(zip(layers, ssim, strict=True))]
        row["ms per image"] = 1000 * extra["seconds_per_image"]
        table.append(row)
        full.append(extra)
    table_df, full_df = pd.DataFrame(table), pd.DataFrame(full)
    curves_df = pd.DataFrame(curves).reindex(columns=["method", "curve", "x", "y", "layer"]).fillna({"layer": ""})
    a = cfg.analysis
    note = (f"Degradation: area between the LeRF and MoRF curves (higher is better), {a.num_images} "
            f"test images of `{cfg.data._target_.rsplit('.', 1)[-1]}`, model `{cfg.model.name}` "
            f"(weights `{cfg.weights}`). ↑/↓: higher/lower is better. Insertion/deletion, ROAD, infidelity and "
            f"max-sensitivity on the first {a.subset_images} images, random-logit SSIM on the first "
            f"{a.sanity.num_images}. Config: `config.yaml`."
            + (f" Rows left out (the method does not apply to this model): {', '.join(skipped)}."
               if skipped else ""))
    write_markdown(table_df, out / "table1.md", "Table 1", note)
    print_table(table_df, "Table 1")
    figures = plot_all(cfg, curves_df, out, prov) + [heatmap_grid(dm, module, out, prov)]
    summary = {f"{r['method']}/{k}": v for r in full for k, v in r.items() if isinstance(v, float)}
    log_results(cfg, {"table1": full_df, "curves": curves_df}, {"table1_figures": figures}, summary)
    return summary


#: the common metrics' columns: (result name, CSV column, table column, scalar from the result); arrows: better
COLUMNS: list[tuple[str, str, str, Callable[[Any], Any]]] = [
    ("insertion_deletion", "insertion_auc", "Ins AUC ↑", lambda r: r.insertion_auc),
    ("insertion_deletion", "deletion_auc", "Del AUC ↓", lambda r: r.deletion_auc),
    ("road", "road", "ROAD (LeRF − MoRF) ↑", lambda r: r.score),
    ("pointing", "pointing_game", "Pointing ↑", lambda r: r),
    ("energy_pointing", "energy_pointing_game", "Energy PG ↑", lambda r: r),
    ("mask_ratio", "mask_ratio", "Mask ratio ↑", lambda r: r),
    ("sparseness", "gini", "Gini ↑", lambda r: r),
    ("random_logit", "random_logit_ssim", "Random-logit SSIM ↓", lambda r: r),
    ("infidelity", "infidelity", "Infidelity ↓", lambda r: r),
    ("max_sensitivity", "max_sensitivity", "Max-sens ↓", lambda r: r),
]


def _curve_rows(label: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    """curves.csv rows of the insertion/deletion curves and ROAD's MoRF/LeRF probability curves."""
    rows = []
    for name, kinds in (("insertion_deletion", ("insertion", "deletion")), ("road", ("morf", "lerf"))):
        res = r.get(name)
        if res is None:
            continue
        for kind in kinds:
            curve = kind if name == "insertion_deletion" else f"road_{kind}"
            rows += [{"method": label, "curve": curve, "x": float(x), "y": float(y)}
                     for x, y in zip(res.fractions, getattr(res, kind), strict=True)]
    return rows


def plot_all(cfg: DictConfig, curves: pd.DataFrame, out: Path, prov: str) -> list[Path]:
    """MoRF/LeRF per degradation tile size, Sensitivity-n per tile size, SSIM per randomised layer."""
    paths = []

    def series(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        sel = curves[curves.curve == name]
        return {m: (g.x.to_numpy(), g.y.to_numpy().astype(float)) for m, g in sel.groupby("method", sort=False)}

    for tile in cfg.analysis.degradation.tile_sizes:
        both = {f"{m} {kind.upper()}": xy for kind in ("morf", "lerf") for m, xy in series(f"{kind}_{tile}").items()}
        paths.append(plot_curves(both, out / f"degradation_{tile}.png", "fraction of tiles replaced",
                                 "normalised target probability", f"Degradation, {tile}x{tile} tiles", prov))
    for tile in cfg.analysis.sensitivity.tile_sizes:
        paths.append(plot_curves(series(f"sensitivity_{tile}"), out / f"sensitivity_{tile}.png",
                                 f"n (tiles of {tile}x{tile} pixels)", "Pearson correlation",
                                 f"Sensitivity-n, {tile}x{tile} tiles", prov, logx=True))
    for name, kinds, xlabel, title in (
            ("insertion_deletion", ("insertion", "deletion"), "fraction of pixels inserted / deleted",
             "Insertion (blurred start) and deletion (to 0)"),
            ("road", ("road_morf", "road_lerf"), "fraction of pixels removed and imputed", "ROAD")):
        both = {f"{m} {kind.removeprefix('road_').upper()}": xy for kind in kinds for m, xy in series(kind).items()}
        if both:
            paths.append(plot_curves(both, out / f"{name}.png", xlabel, "mean target probability", title, prov))
    sanity = series("sanity_ssim")
    if sanity:
        layers = curves[curves.curve == "sanity_ssim"].drop_duplicates("x").layer
        paths.append(plot_curves(sanity, out / "sanity_ssim.png",
                                 "randomised from the last layer down to step: " + ", ".join(layers),
                                 "SSIM to the original heatmap", "Cascading randomisation", prov))
    return paths


def heatmap_grid(dm: ImageDataModule, module: AttributionEvaluation, out: Path, prov: str) -> Path:
    """Every method's maps (one column each) on the grid images, one row per image titled by its target."""
    assert module.grid_batch is not None and module.grid_target is not None
    names = [dm.class_names[int(t)] for t in module.grid_target]
    images = dm.denormalize(module.grid_batch["image"]).cpu()
    units = {label: module.methods[label].unit for label in module.grid_maps}
    return plot_grid(images, module.grid_maps, out / "heatmaps_grid.png", prov, names, units)
