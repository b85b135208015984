"""``python evaluate.py analysis=coherency``: SID is invariant under a function-preserving rescaling, gradients are not.

Layer ``analysis.layer``'s weights and bias are multiplied by 1/``factor`` and the next conv layer's weights
by ``factor`` (`infoflow.discarding.rescale_adjacent_layers`, which checks that the logits are unchanged).
Printed and written to ``coherency.csv``, per layer: the mean SID per pixel (nats) and the mean plain
gradient-map magnitude |d sum(h(x)) / dx| before and after, with their relative changes. SID should barely
move; the rescaled layer's gradient map shrinks by ``factor``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from omegaconf import DictConfig

from infoflow.analyses import ANALYSES
from infoflow.analyses.common import log_results
from infoflow.analyses.layerwise import first_images, sid_config
from infoflow.builders import build_datamodule, build_model
from infoflow.discarding import coherency_report
from infoflow.utils.tables import to_markdown_table


@ANALYSES.register("coherency")
def run(cfg: DictConfig) -> dict[str, Any]:
    an = cfg.analysis
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    layer = an.layer or model.conv_layers()[0]
    images01 = dm.denormalize(first_images(dm, an.num_images, "cpu")["image"])
    report = coherency_report(
        model, layer, images01, dm.mean, dm.std, an.factor, sid_config(an.sid), an.delta_f2_samples
    )
    rows = []
    for j, name in enumerate(report["layers"]):  # type: ignore[arg-type]
        sid_b, sid_a = float(report["sid_before"][j]), float(report["sid_after"][j])  # type: ignore[index]
        grad_b, grad_a = float(report["grad_before"][j]), float(report["grad_after"][j])  # type: ignore[index]
        rows.append({
            "layer": name, "rescaled_by": 1 / an.factor if j == 0 else an.factor,
            "sid_before": sid_b, "sid_after": sid_a, "sid_change": (sid_a - sid_b) / abs(sid_b),
            "grad_before": grad_b, "grad_after": grad_a, "grad_change": (grad_a - grad_b) / grad_b,
        })
    df = pd.DataFrame(rows)
    print(f"coherency of {cfg.model.name}: {layer} x 1/{an.factor:g}, next conv layer x {an.factor:g} "
          f"(relative logit change {report['logit_change']:.1e}); SID in nats/pixel, gradients |d sum h / dx|")
    print(to_markdown_table(df, ".4g"))
    summary = {
        "logit_change": float(report["logit_change"]),  # type: ignore[arg-type]
        "max_abs_sid_change": float(df["sid_change"].abs().max()),
        "max_abs_grad_change": float(df["grad_change"].abs().max()),
    }
    print(f"SID changes by at most {summary['max_abs_sid_change']:.1%}; "
          f"gradient maps change by up to {summary['max_abs_grad_change']:.1%}")
    log_results(cfg, {"coherency": df}, {}, summary)
    return summary
