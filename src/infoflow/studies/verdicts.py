"""One verdict per paper claim, computed from a study's numbers: what was measured against what the paper reports.

Conventions: SID in nats per input pixel; a higher SID means that the layer discards more input information.
Each rule gets the long per-layer table (model, layer_index, layer, sid_per_pixel, ...), the per-model table
(model, accuracy, study figures, in the study's model order) and the study's ``task.claims`` settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from infoflow.registry import Registry


@dataclass
class Verdict:
    claim: str
    paper: str
    measured: str
    reproduced: bool | None  # None: the numbers cannot decide (too few models, NaN)

    def line(self) -> str:
        word = {True: "REPRODUCED", False: "NOT REPRODUCED", None: "INCONCLUSIVE"}[self.reproduced]
        return f"- **{self.claim}**: {word}. Paper: {self.paper} Measured: {self.measured}"


Rule = Callable[[pd.DataFrame, pd.DataFrame, dict[str, Any]], list[Verdict]]
VERDICTS: Registry[Rule] = Registry("study")


def sid_by_layer(layers: pd.DataFrame, model: str, conv_only: bool = True) -> pd.Series:
    """SID per pixel of `model` indexed by layer name, in layer order (conv layers only, by default)."""
    rows = layers[layers.model == model].sort_values("layer_index")
    if conv_only:
        rows = rows[rows.layer.str.startswith("conv")]
    return pd.Series(rows.sid_per_pixel.to_numpy(), index=rows.layer.to_list())


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@VERDICTS.register("compression")
def compression(layers: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    names = list(models.model)
    original, pruned = names[0], names[1:]
    means = {m: float(sid_by_layer(layers, m).mean()) for m in names}
    lower = [means[m] < means[original] for m in pruned]
    out = [Verdict(
        "Fig. 4b: compression lowers the SID of the features (pruned nets discard less)",
        "the pruned VGG-16s (CUB-200) have lower layer-wise SID than the original.",
        f"mean conv-layer SID {_fmt(means)}; lower than {original} for {sum(lower)}/{len(pruned)} pruned nets.",
        None if not pruned or any(np.isnan(list(means.values()))) else all(lower),
    )]
    if "robustness_l2" in models and "sid_last" in models:
        ok = models.dropna(subset=["robustness_l2", "sid_last"])
        rho = spearman(ok.sid_last.to_numpy(), ok.robustness_l2.to_numpy()) if len(ok) >= 3 else float("nan")
        pairs = ", ".join(f"{r.model} (SID {r.sid_last:.3f}, |eps| {r.robustness_l2:.4f})" for r in ok.itertuples())
        out.append(Verdict(
            "Appendix A: a lower last-layer SID goes with weaker adversarial robustness",
            "SID -2.690/-2.693/-2.695/-2.723 vs |eps|_2 0.00276/0.00281/0.00254/0.00109 at 100/38/12.8/8 % parameters.",
            f"{pairs}; Spearman rho(SID, |eps|) = {rho:.2f} over {len(ok)} nets.",
            None if np.isnan(rho) else rho > 0,
        ))
    return out


@VERDICTS.register("distillation")
def distillation(layers: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    scratch, distilled = claims["scratch"], claims["distilled"]
    a, b = sid_by_layer(layers, scratch), sid_by_layer(layers, distilled)
    below = int((b < a).sum())
    return [Verdict(
        "Fig. 5a: students learned with distillation discard less than the same net learned from labels",
        "the distilled AlexNets have lower SID than the ordinarily learned AlexNet at the conv layers.",
        f"mean conv-layer SID {scratch} {a.mean():.3f} vs {distilled} {b.mean():.3f}; "
        f"{distilled} lower at {below}/{len(a)} layers ({_fmt((b - a).to_dict())} difference).",
        None if a.isna().any() or b.isna().any() else bool(b.mean() < a.mean()),
    )]


@VERDICTS.register("damage")
def damage(layers: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    original, revised, layer = claims["original"], claims["revised"], claims["revised_layer"]
    diff = sid_by_layer(layers, revised) - sid_by_layer(layers, original)
    upto = diff.loc[: layer]
    jump = upto.diff().fillna(upto)  # the change of the difference from the layer before
    ok = bool(diff[layer] > 0 and jump.idxmax() == layer)
    return [Verdict(
        f"Fig. 4a: the revised layer ({layer}: 4 filters of 7x7) makes discarding jump at that layer",
        "the revised VGG-16/19 discard much more input information than the originals at the revised layer.",
        f"SID(revised) - SID(original) by layer: {_fmt(diff.to_dict())}; the largest increase up to {layer} "
        f"is at {jump.idxmax()} (+{jump.max():.3f}).",
        None if diff.isna().any() else ok,
    )]


@VERDICTS.register("autoencoder")
def autoencoder(layers: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    tol, parts, rel = float(claims.get("similar_tol", 0.1)), [], []
    for cls, ae in claims["pairs"]:
        a, b = sid_by_layer(layers, cls), sid_by_layer(layers, ae)
        r = float((a - b).abs().mean() / ((a.abs() + b.abs()) / 2).mean())
        rel.append(r)
        parts.append(f"{cls} {a.mean():.3f} vs {ae} {b.mean():.3f} (relative difference {r:.2f})")
    return [Verdict(
        "Fig. 3: classification and reconstruction nets on the same encoder have similar SID",
        "ResNet-20/32/44 classifiers and auto-encoders (CIFAR-10) have similar layer-wise SID.",
        f"mean conv-layer SID {'; '.join(parts)}; similar means a mean relative difference below {tol}.",
        None if np.isnan(rel).any() else all(r < tol for r in rel),
    )]


@VERDICTS.register("epochs")
def epochs(layers: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    names = list(models.model)  # in epoch order
    table = pd.DataFrame({m: sid_by_layer(layers, m) for m in names})  # layers x epochs
    high = table.index[-1]
    curve = table.loc[high]
    first_min = int(np.nanargmin(curve.to_numpy()))
    ok = 0 < first_min < len(names) - 1 and curve.iloc[-1] > curve.iloc[first_min]
    return [Verdict(
        f"Fig. 5b: a high layer ({high}) follows the information-bottleneck picture over training",
        "ResNet-32 (CIFAR-10): in high layers information discarding first falls (fitting), then rises (compression).",
        f"SID of {high} by epoch: {_fmt(curve.to_dict())}; minimum at {names[first_min]}, "
        f"{'then rising' if curve.iloc[-1] > curve.iloc[first_min] else 'not rising after it'}.",
        None if curve.isna().any() or len(names) < 3 else bool(ok),
    )]
