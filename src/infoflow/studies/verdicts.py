"""One verdict per paper claim, decided by the interval of the measured effect.

Conventions: SID, RU and concentration in nats per input pixel; a higher SID means that the layer discards
more input information. Each rule gets the per-image table ``cells`` (model, seed, image, layer_index, layer,
sid_per_pixel, ru_per_pixel, concentration: one row per arm x training seed x analysed image x layer), the
per-model table (model, accuracy, study figures, in the study's model order) and the study's ``task.claims``.

An effect is a difference between two arms of a per-(seed, image) value (a quantity averaged over the
claim's layers). Its interval includes the seed-to-seed variation: each seed's difference of arm means
(over its images) is one observation, and the interval is Student's t interval of their mean over the seeds
(``level``, default 0.95). A percentile cluster bootstrap over 3 seeds (`infoflow.stats.cluster_difference`) has only 10 distinct seed
resamples and covers far below its level (measured: 88.5 % of 200 null pairs at a nominal 95 %, 3 seeds x 16
images); the t interval over seed means is exact for normal seed effects and wide when
seeds disagree, as it should be. With one seed the interval comes from the images alone, and says so.
The seed spread (SD of the per-seed differences) and the image spread (mean over seeds of the images'
standard error of the difference) are reported separately.

Rules (`decide`): a directional claim is REPRODUCED when its interval excludes zero in the paper's direction,
CONTRADICTED when it excludes zero in the opposite direction; a similarity claim is REPRODUCED when its
interval lies wholly inside ``[-margin, margin]`` (``task.claims.margin``: ``{value, unit}``) and
CONTRADICTED when it lies wholly outside it; everything else is INCONCLUSIVE, still with effect and interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scistats

from infoflow.registry import Registry

UNIT = "nats/pixel"
QUANTITY = {"sid": "sid_per_pixel", "ru": "ru_per_pixel", "concentration": "concentration"}
WORDS = ("REPRODUCED", "CONTRADICTED", "INCONCLUSIVE")


@dataclass(frozen=True)
class Effect:
    """A difference between arms with its interval; spreads in the effect's unit."""

    estimate: float
    low: float
    high: float
    level: float
    seeds: int
    images: int          # images per seed (the smallest count)
    seed_spread: float   # SD over seeds of the per-seed difference (NaN with one seed)
    image_spread: float  # mean over seeds of the images' standard error of the difference
    unit: str = UNIT

    @property
    def finite(self) -> bool:
        return bool(np.isfinite([self.estimate, self.low, self.high]).all())

    def text(self) -> str:
        seeds = (f"{self.seeds} seeds x {self.images} images; seed spread {self.seed_spread:.3g}, "
                 f"image spread {self.image_spread:.3g}") if self.seeds > 1 else \
            f"1 seed x {self.images} images (seed variation not measured)"
        return (f"{self.estimate:+.4f} {self.unit}, {self.level:.0%} interval [{self.low:+.4f}, {self.high:+.4f}] "
                f"({seeds})")


def seed_difference(a_by_seed: Sequence[np.ndarray], b_by_seed: Sequence[np.ndarray], level: float = 0.95,
                    unit: str = UNIT) -> Effect:
    """The effect mean(b) - mean(a), arms given as per-seed arrays of per-image values (module docstring).

    Seeds are paired by position; images within a seed need not be paired (their counts may differ).
    """
    pairs = [(np.asarray(a, float), np.asarray(b, float)) for a, b in zip(a_by_seed, b_by_seed, strict=True)]
    pairs = [(a[np.isfinite(a)], b[np.isfinite(b)]) for a, b in pairs]
    pairs = [(a, b) for a, b in pairs if a.size and b.size]
    nan = float("nan")
    if not pairs:
        return Effect(nan, nan, nan, level, 0, 0, nan, nan, unit)
    diffs = np.array([b.mean() - a.mean() for a, b in pairs])
    img_se = np.array([np.sqrt((a.var(ddof=1) / a.size if a.size > 1 else nan)
                               + (b.var(ddof=1) / b.size if b.size > 1 else nan)) for a, b in pairs])
    images = int(min(min(a.size, b.size) for a, b in pairs))
    est = float(diffs.mean())
    if len(diffs) > 1:
        se, dof, spread = diffs.std(ddof=1) / np.sqrt(len(diffs)), len(diffs) - 1, float(diffs.std(ddof=1))
    else:  # one seed: the images' standard error, Welch's degrees of freedom
        a, b = pairs[0]
        va, vb = (a.var(ddof=1) / a.size if a.size > 1 else nan), (b.var(ddof=1) / b.size if b.size > 1 else nan)
        se, spread = float(np.sqrt(va + vb)), nan
        dof = (va + vb) ** 2 / (va ** 2 / max(a.size - 1, 1) + vb ** 2 / max(b.size - 1, 1)) if se > 0 else 1.0
    half = float(scistats.t.ppf(0.5 + level / 2, dof) * se) if np.isfinite(se) else nan
    return Effect(est, est - half, est + half, level, len(diffs), images, spread, float(np.nanmean(img_se))
                  if np.isfinite(img_se).any() else nan, unit)


def seed_mean(by_seed: Sequence[np.ndarray], level: float = 0.95, unit: str = UNIT) -> Effect:
    """The mean of one arm's seed means with the same interval as `seed_difference` (against an exact zero)."""
    effect = seed_difference([np.zeros(2)] * len(by_seed), by_seed, level, unit)
    sizes = [int(np.isfinite(np.asarray(v, float)).sum()) for v in by_seed]
    return replace(effect, images=min(sizes) if sizes else 0)


def decide(effect: Effect, direction: int = 0, margin: float | None = None) -> tuple[str, str]:
    """(word, rule) for `effect`: `direction` +1/-1 for a directional claim, 0 with `margin` for a similarity."""
    if not effect.finite:
        return "INCONCLUSIVE", "no interval (not measured, NaN, or fewer than two values)"
    lo, hi = effect.low, effect.high
    if direction:
        sign = "> 0" if direction > 0 else "< 0"
        rule = f"the paper's direction is {sign}: REPRODUCED if the interval excludes 0 that way, " \
               "CONTRADICTED if it excludes 0 the other way"
        if (lo > 0 and direction > 0) or (hi < 0 and direction < 0):
            return "REPRODUCED", rule
        if (lo > 0 and direction < 0) or (hi < 0 and direction > 0):
            return "CONTRADICTED", rule
        return "INCONCLUSIVE", rule + "; the interval contains 0"
    if margin is None:
        raise ValueError("a similarity claim needs a margin")
    rule = f"similar: REPRODUCED if the interval lies inside +-{margin:g} {effect.unit}, CONTRADICTED if wholly " \
           "outside"
    if -margin < lo and hi < margin:
        return "REPRODUCED", rule
    if lo >= margin or hi <= -margin:
        return "CONTRADICTED", rule
    return "INCONCLUSIVE", rule + "; the interval straddles the margin"


@dataclass
class Verdict:
    claim: str
    paper: str
    measured: str
    word: str  # REPRODUCED | CONTRADICTED | INCONCLUSIVE
    rule: str = ""
    effect: Effect | None = None

    @property
    def reproduced(self) -> bool | None:
        return {"REPRODUCED": True, "CONTRADICTED": False}.get(self.word)

    def line(self) -> str:
        eff = f" Effect: {self.effect.text()}." if self.effect is not None else ""
        return f"- **{self.claim}**: {self.word}.{eff} Rule: {self.rule}. Paper: {self.paper} Measured: {self.measured}"


Rule = Callable[[pd.DataFrame, pd.DataFrame, dict[str, Any]], list[Verdict]]
VERDICTS: Registry[Rule] = Registry("study")


def conv_layers(cells: pd.DataFrame) -> list[str]:
    order = cells.drop_duplicates("layer").sort_values("layer_index").layer.tolist()
    conv = [name for name in order if str(name).startswith("conv")]
    return conv or order


def arm_values(cells: pd.DataFrame, model: str, quantity: str = "sid",
               layers: Sequence[str] | None = None) -> dict[int, np.ndarray]:
    """seed -> per-image values of `model`: `quantity` averaged over `layers` (default: the conv layers)."""
    col = QUANTITY[quantity]
    rows = cells[cells.model == model]
    if col not in rows:
        return {}
    rows = rows[rows.layer.isin(list(layers or conv_layers(cells)))]
    per = rows.groupby(["seed", "image"])[col].mean()
    return {int(s): g.to_numpy() for s, g in per.groupby(level="seed")}


def effect_between(cells: pd.DataFrame, a: str, b: str, quantity: str = "sid",
                   layers: Sequence[str] | None = None, level: float = 0.95) -> Effect:
    """mean(`b`) - mean(`a`) of `quantity` over `layers`, seeds paired by their index in each arm."""
    va, vb = arm_values(cells, a, quantity, layers), arm_values(cells, b, quantity, layers)
    sa, sb = sorted(va), sorted(vb)
    n = min(len(sa), len(sb))
    return seed_difference([va[s] for s in sa[:n]], [vb[s] for s in sb[:n]], level)


def _margin(claims: dict[str, Any]) -> tuple[float, str]:
    m = claims.get("margin") or {"value": 0.05, "unit": UNIT}
    if isinstance(m, dict):
        return float(m["value"]), str(m.get("unit", UNIT))
    return float(m), UNIT


def _verdict(claim: str, paper: str, measured: str, effect: Effect, direction: int = 0,
             margin: float | None = None) -> Verdict:
    word, rule = decide(effect, direction, margin)
    return Verdict(claim, paper, measured, word, rule, effect)


@VERDICTS.register("compression")
def compression(cells: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    names = list(dict.fromkeys(models.model))
    original, pruned = names[0], names[1:]
    level, (margin, unit) = float(claims.get("level", 0.95)), _margin(claims)
    out = []
    for m in pruned:
        out.append(_verdict(
            f"Fig. 4b: compression lowers SID ({m} - {original}, mean conv-layer SID)",
            "the pruned VGG-16s (CUB-200) have lower layer-wise SID than the original.",
            f"mean conv-layer SID of {m} minus {original}.",
            effect_between(cells, original, m, "sid", level=level), direction=-1))
        for q in ("ru", "concentration"):
            out.append(_verdict(
                f"Fig. 4b: compression leaves {q} unchanged ({m} - {original})",
                f"the pruned nets' {q} does not change significantly.",
                f"mean conv-layer {q} of {m} minus {original}; margin +-{margin:g} {unit}.",
                effect_between(cells, original, m, q, level=level), margin=margin))
    out.append(robustness_verdict(models, claims))
    return out


def robustness_verdict(models: pd.DataFrame, claims: dict[str, Any]) -> Verdict:
    """Appendix A, decided only when the attack succeeded on every (image, target) pair of every model.

    Effect: per seed, Spearman's rho between the models' last-layer SID and their robustness |eps|_2; its
    interval is the t interval over seeds (unit: rank correlation); the paper's direction is rho > 0.
    """
    claim = "Appendix A: a lower last-layer SID goes with weaker adversarial robustness"
    paper = "SID -2.690/-2.693/-2.695/-2.723 vs |eps|_2 0.00276/0.00281/0.00254/0.00109 at 100/38/12.8/8 % parameters."
    if "robustness_l2" not in models or "sid_last" not in models:
        return Verdict(claim, paper, "no robustness stage.", "INCONCLUSIVE", "needs the robustness stage")
    if "attack_success" in models and not (models.attack_success.fillna(0) >= 1.0).all():
        low = models[models.attack_success.fillna(0) < 1.0]
        why = ", ".join(f"{r.model} seed {getattr(r, 'seed', 0)}: {r.attack_success:.0%}" for r in low.itertuples())
        return Verdict(claim, paper, f"the attack did not succeed on every pair ({why}).", "INCONCLUSIVE",
                       "decided only when the attack succeeded on every (image, target) pair; raise "
                       "task.stages.robustness.params.steps or c_values")
    seeds = models.seed if "seed" in models else pd.Series(0, index=models.index)
    rhos = []
    for _, g in models.assign(_seed=seeds).groupby("_seed"):
        g = g.dropna(subset=["robustness_l2", "sid_last"])
        if len(g) >= 3:
            rhos.append(float(scistats.spearmanr(g.sid_last, g.robustness_l2).statistic))
    rhos = [r for r in rhos if np.isfinite(r)]
    if len(rhos) < 2:
        return Verdict(claim, paper, f"Spearman rho over seeds: {rhos}.", "INCONCLUSIVE",
                       "needs rho on at least two seeds with three or more models")
    eff = seed_difference([np.zeros(1)] * len(rhos), [np.array([r]) for r in rhos],
                          float(claims.get("level", 0.95)), unit="(Spearman rho)")
    return _verdict(claim, paper, f"Spearman rho(last-layer SID, |eps|_2) per seed: "
                    f"{', '.join(f'{r:.2f}' for r in rhos)}.", eff, direction=+1)


@VERDICTS.register("distillation")
def distillation(cells: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    scratch, distilled = claims["scratch"], claims["distilled"]
    return [_verdict(
        "Fig. 5a: students learned with distillation discard less than the same net learned from labels",
        "the distilled AlexNets have lower SID than the ordinarily learned AlexNet at the conv layers.",
        f"mean conv-layer SID of {distilled} minus {scratch}.",
        effect_between(cells, scratch, distilled, "sid", level=float(claims.get("level", 0.95))), direction=-1)]


@VERDICTS.register("damage")
def damage(cells: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    original, revised, layer = claims["original"], claims["revised"], claims["revised_layer"]
    level = float(claims.get("level", 0.95))
    return [
        _verdict(f"Fig. 4a: the revised layer ({layer}) discards much more input information there",
                 "the revised VGG-16/19 discard much more input information than the originals at the revised layer.",
                 f"SID at {layer} of {revised} minus {original}.",
                 effect_between(cells, original, revised, "sid", [layer], level), direction=+1),
        _verdict(f"Fig. 4a: concentration rises slightly at the revised layer ({layer})",
                 "the revised nets' concentration is slightly higher at the revised layer.",
                 f"concentration at {layer} of {revised} minus {original}.",
                 effect_between(cells, original, revised, "concentration", [layer], level), direction=+1),
    ]


@VERDICTS.register("autoencoder")
def autoencoder(cells: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    level, (margin, unit) = float(claims.get("level", 0.95)), _margin(claims)
    pairs = [tuple(p) for p in claims["pairs"]]
    out = [_verdict(f"Fig. 3: classification and reconstruction nets on the same encoder have similar SID ({cls}, {ae})",
                    "ResNet-20/32/44 classifiers and auto-encoders (CIFAR-10) have similar layer-wise SID.",
                    f"mean conv-layer SID of {ae} minus {cls}; margin +-{margin:g} {unit}.",
                    effect_between(cells, cls, ae, "sid", level=level), margin=margin) for cls, ae in pairs]
    shallow, deep = pairs[0][0], pairs[-1][0]
    for q in ("sid", "ru", "concentration"):
        which = f"{deep} - {shallow}" if len(pairs) > 1 else f"only {shallow} here"
        claim = f"Fig. 3: a deeper net has higher {q} than a shallow one ({which})"
        paper = "the deeper ResNets have higher SID, RU and concentration."
        if len(pairs) < 2:
            out.append(Verdict(claim, paper, "one depth only.", "INCONCLUSIVE", "needs classifiers of two depths"))
            continue
        out.append(_verdict(claim, paper, f"mean conv-layer {q} of {deep} minus {shallow}.",
                            effect_between(cells, shallow, deep, q, level=level), direction=+1))
    return out


@VERDICTS.register("epochs")
def epochs(cells: pd.DataFrame, models: pd.DataFrame, claims: dict[str, Any]) -> list[Verdict]:
    names = list(dict.fromkeys(models.model))  # in epoch order
    level = float(claims.get("level", 0.95))
    high = conv_layers(cells)[-1]
    claim = f"Fig. 5b: a high layer ({high}) first falls, then rises over training"
    paper = "ResNet-32 (CIFAR-10): in high layers information discarding first falls (fitting), then rises."
    if len(names) < 3:
        return [Verdict(claim, paper, f"{len(names)} evaluated epochs.", "INCONCLUSIVE", "needs three epochs")]
    curve = [np.nanmean(np.concatenate(list(arm_values(cells, m, "sid", [high]).values()) or [np.array([np.nan])]))
             for m in names]
    interior = int(np.nanargmin(curve[1:-1])) + 1 if np.isfinite(curve[1:-1]).any() else 1
    low = names[interior]
    means = ", ".join(f"{m} {c:.3f}" for m, c in zip(names, curve, strict=True))
    return [
        _verdict(f"{claim}: the fall ({low} - {names[0]})", paper, f"SID of {high} by epoch: {means}.",
                 effect_between(cells, names[0], low, "sid", [high], level), direction=-1),
        _verdict(f"{claim}: the rise ({names[-1]} - {low})", paper, f"the lowest interior epoch is {low}.",
                 effect_between(cells, low, names[-1], "sid", [high], level), direction=+1),
    ]
