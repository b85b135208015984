"""``python evaluate.py`` (analysis=heatmaps): heatmaps of one method on test images, as PNG, CSV and W&B.

Per image: a PNG of the heatmap over the image with a colour bar in the method's unit, the target class
and (for bottleneck methods) its probability with and without the bottleneck; a CSV row with the same
and, where the data has object masks, the mean heatmap inside and outside the object. Per target class
(with masks): the mean inside and outside over its images and their ratio, printed and written to
``heatmaps_by_class.csv`` and ``heatmaps_by_class.md``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from omegaconf import DictConfig

from infoflow.analyses import ANALYSES
from infoflow.analyses.common import evaluation_batches, log_results, output_dir, provenance
from infoflow.builders import build_datamodule, build_method, build_model
from infoflow.utils.determinism import make_deterministic
from infoflow.utils.tables import to_markdown_table, write_markdown
from infoflow.viz import plot_heatmap


def by_class(df: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Per target class (in class order, only those present), then ``all`` images: ``images``,
    ``mean_inside`` and ``mean_outside`` (means over the images of the per-image means, in the heatmap's
    unit), their ``ratio`` and the smallest per-image ratio ``min_image_ratio``."""
    groups = [(name, df[df["target"] == k]) for k, name in enumerate(class_names)] + [("all", df)]
    rows = []
    for name, sel in groups:
        if len(sel):
            inside, outside = float(sel["mean_inside"].mean()), float(sel["mean_outside"].mean())
            rows.append({"class": name, "images": len(sel), "mean_inside": inside, "mean_outside": outside,
                         "ratio": inside / max(outside, 1e-12),
                         "min_image_ratio": float(sel["inside_outside_ratio"].min())})
    return pd.DataFrame(rows)


@ANALYSES.register("heatmaps")
def run(cfg: DictConfig) -> dict[str, Any]:
    make_deterministic(cfg.seed)  # the estimator's shuffled pass over the training split included
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    method = build_method(cfg, model, dm)
    layer = cfg.method.get("layer")  # the layer the method itself uses (None: a method without a layer)
    where = cfg.model.name if layer is None else f"{cfg.model.name}/{layer}"
    device = method.device
    out = output_dir(cfg) / "heatmaps"
    prov = provenance(cfg)
    rows, pngs = [], []
    for batch in evaluation_batches(dm, cfg.num_images, device):
        x, label = batch["image"], batch["label"]
        target = label if cfg.target == "label" else model.module(x).argmax(1)
        explain = getattr(method, "explain", None)
        result = explain(x, target) if explain else None
        heat = result.heatmap if result is not None else method.attribute(x, target)
        images = dm.denormalize(x)
        for i in range(x.shape[0]):
            idx = len(rows)
            name = dm.class_names[int(target[i])]
            row: dict[str, Any] = {
                "index": idx, "label": int(label[i]), "target": int(target[i]), "target_name": name,
                "method": cfg.method.name, "model": cfg.model.name, "layer": "" if layer is None else str(layer), "weights": str(cfg.weights),
                f"total [{method.unit.split('/')[0]}]": float(heat[i].sum()),
            }
            title = f"{cfg.method.name} @ {where}  target: {name}"
            if result is not None:
                row["prob_with"], row["prob_without"] = float(result.prob_with[i]), float(result.prob_without[i])
                title += f"  p={row['prob_without']:.3f} (with bottleneck: {row['prob_with']:.3f})"
            if "mask" in batch:
                m = batch["mask"][i].bool()
                row["mean_inside"], row["mean_outside"] = float(heat[i][m].mean()), float(heat[i][~m].mean())
                row["inside_outside_ratio"] = row["mean_inside"] / max(row["mean_outside"], 1e-12)
            rows.append(row)
            pngs.append(plot_heatmap(images[i], heat[i], title, method.unit, out / f"{idx:04d}_{name}.png", prov))
    df = pd.DataFrame(rows)
    tables = {"heatmaps": df}
    summary: dict[str, Any] = {"num_images": len(df)}
    if "mean_inside" in df:
        summary["mean_inside"] = float(df["mean_inside"].mean())
        summary["mean_outside"] = float(df["mean_outside"].mean())
        summary["inside_outside_ratio"] = summary["mean_inside"] / max(summary["mean_outside"], 1e-12)
        classes = tables["heatmaps_by_class"] = by_class(df, dm.class_names)
        summary["worst_class_ratio"] = float(classes["ratio"][:-1].min())
        print(f"mean heatmap inside the object masks: {summary['mean_inside']:.4f} {method.unit}, "
              f"outside: {summary['mean_outside']:.4f} {method.unit} (ratio {summary['inside_outside_ratio']:.2f})")
        print(f"per target class [{method.unit}]:\n{to_markdown_table(classes)}")
        write_markdown(classes, output_dir(cfg) / "heatmaps_by_class.md",
                       f"{cfg.method.name} @ {where}: mean heatmap inside / outside the object "
                       f"masks per target class [{method.unit}]")
    print(f"wrote {len(pngs)} heatmaps to {out} and {', '.join(f'{t}.csv' for t in tables)}")
    log_results(cfg, tables, {"heatmaps": pngs[:16]}, summary)
    return summary
