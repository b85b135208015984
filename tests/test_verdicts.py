"""Verdicts decided by intervals, on synthetic per-image tables with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scistats

from infoflow.studies.verdicts import VERDICTS, decide, effect_between, seed_difference

LAYERS = ["conv1", "conv2", "conv3"]


def cells(arms: dict[str, np.ndarray]) -> pd.DataFrame:
    """arm -> (seeds, images, layers) SID values as the long per-image table; RU/concentration = SID / 2."""
    rows = []
    for model, v in arms.items():
        for s in range(v.shape[0]):
            for i in range(v.shape[1]):
                for j, layer in enumerate(LAYERS):
                    rows.append({"model": model, "seed": s, "image": i, "layer_index": j + 1, "layer": layer,
                                 "sid_per_pixel": v[s, i, j], "ru_per_pixel": v[s, i, j] / 2,
                                 "concentration": v[s, i, j] / 2})
    return pd.DataFrame(rows)


def arms(rng: np.random.Generator, shift: float, seeds: int = 3, images: int = 16) -> dict[str, np.ndarray]:
    """Two arms; each seed adds its own offset (seed variation), each image its noise; b = a's law + shift."""
    def one(delta: float) -> np.ndarray:
        return (-2.0 + delta + rng.normal(0, 0.05, (seeds, 1, 1)) + rng.normal(0, 0.1, (seeds, images, 1))
                + np.linspace(0, 0.3, len(LAYERS)))
    return {"scratch": one(0.0), "distilled": one(shift)}


def test_identically_distributed_arms_are_inconclusive_in_at_least_95_percent_of_seeds() -> None:
    # the t interval over seeds is exact for these normal seed effects: the expected rate is 0.95; 2,000
    # replicates leave a Monte-Carlo standard error of 0.005, so the bound allows three of them
    n, words = 2000, []
    for s in range(n):
        data = arms(np.random.default_rng(s), 0.0)
        a, b = (list(data[k].mean(axis=2)) for k in ("scratch", "distilled"))
        words.append(decide(seed_difference(a, b), direction=-1)[0])
    assert np.mean([w == "INCONCLUSIVE" for w in words]) >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / n)
    assert words.count("REPRODUCED") > 0 and words.count("CONTRADICTED") > 0  # both tails, symmetric
    claims = {"scratch": "scratch", "distilled": "distilled"}  # and through the rule on the long table
    table_words = [VERDICTS.get("distillation")(cells(arms(np.random.default_rng(s), 0.0)), pd.DataFrame(),
                                                claims)[0].word for s in range(20)]
    assert table_words == words[:20]


def test_the_interval_has_its_coverage_and_includes_seed_variation() -> None:
    # the per-seed effect spreads with SD 0.2 while images are nearly noiseless: an images-only interval
    # would cover far below 95 %; the seed-level one covers at its level
    hits, spreads = 0, []
    for s in range(400):
        rng = np.random.default_rng(s)
        a = [rng.normal(0, 0.01, 16) for _ in range(4)]
        b = [rng.normal(0.5 + rng.normal(0, 0.2), 0.01, 16) for _ in range(4)]
        e = seed_difference(a, b)
        hits += e.low <= 0.5 <= e.high
        spreads.append((e.seed_spread, e.image_spread))
    seed_sd, image_se = np.mean(spreads, axis=0)
    assert seed_sd == pytest.approx(0.2, rel=0.15) and image_se == pytest.approx(0.01 * np.sqrt(2 / 16), rel=0.1)
    assert 0.92 <= hits / 400 <= 0.98


def planted(sign: int, seeds: int = 6) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Per-seed differences whose mean is exactly 3 standard errors (of the mean over seeds) times `sign`."""
    z = np.array([1.0, -1.0, 0.5, -0.5, 0.2, -0.2][:seeds])
    z = (z - z.mean()) / z.std(ddof=1)  # mean 0, SD 1
    se = 0.1 / np.sqrt(seeds)
    d = sign * 3 * se + 0.1 * z
    img = np.linspace(-0.01, 0.01, 16)
    return [img.copy() for _ in d], [img + x for x in d], se


@pytest.mark.parametrize(("sign", "word"), [(-1, "REPRODUCED"), (+1, "CONTRADICTED")])
def test_a_planted_3_se_effect_is_reproduced_in_the_papers_direction_and_contradicted_against_it(sign, word) -> None:
    a, b, se = planted(sign)
    e = seed_difference(a, b)
    assert e.estimate == pytest.approx(sign * 3 * se)
    half = scistats.t.ppf(0.975, len(a) - 1) * se  # Student's t over the seed differences
    assert (e.high - e.low) / 2 == pytest.approx(half, rel=1e-6)
    assert decide(e, direction=-1)[0] == word  # the paper's direction: SID falls (distillation)
    # and through the rule on a table
    v = np.stack([np.stack([x[:, None].repeat(3, 1) for x in a]), np.stack([x[:, None].repeat(3, 1) for x in b])])
    verdict = VERDICTS.get("distillation")(cells({"scratch": v[0], "distilled": v[1]}), pd.DataFrame(),
                                           {"scratch": "scratch", "distilled": "distilled"})[0]
    assert verdict.word == word and "interval" in verdict.line() and "nats/pixel" in verdict.line()


@pytest.mark.parametrize(("shift", "word"), [(0.0, "REPRODUCED"), (0.5, "CONTRADICTED")])
def test_a_similarity_claim_inside_then_outside_the_margin(shift: float, word: str) -> None:
    data = arms(np.random.default_rng(1), shift, seeds=5, images=32)
    table = cells({"cls": data["scratch"], "ae": data["distilled"]})
    claims = {"pairs": [["cls", "ae"]], "margin": {"value": 0.2, "unit": "nats/pixel"}}
    verdict = VERDICTS.get("autoencoder")(table, pd.DataFrame(), claims)[0]
    assert verdict.word == word, verdict.line()
    assert "+-0.2 nats/pixel" in verdict.line()


def test_damage_reads_the_revised_layer_only() -> None:
    rng = np.random.default_rng(0)
    o = rng.normal(0, 0.01, (4, 16, 3))
    r = o.copy()
    r[..., 1] += 1.0  # conv2 jumps; conv1 and conv3 equal
    table = cells({"o": o, "r": r})
    out = VERDICTS.get("damage")(table, pd.DataFrame(), {"original": "o", "revised": "r", "revised_layer": "conv2"})
    assert [v.word for v in out] == ["REPRODUCED", "REPRODUCED"]
    assert effect_between(table, "o", "r", "sid", ["conv3"]).estimate == pytest.approx(0.0)


def test_epochs_fall_then_rise() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.01, (3, 8, 3))
    curve = {"epoch_0": base + 1.0, "epoch_1": base + 0.2, "epoch_2": base + 0.5}
    models = pd.DataFrame({"model": list(curve)})
    out = VERDICTS.get("epochs")(cells(curve), models, {})
    assert [v.word for v in out] == ["REPRODUCED", "REPRODUCED"]


def test_robustness_is_decided_only_when_every_attack_succeeded() -> None:
    models = pd.DataFrame({"model": ["a", "b", "c"] * 2, "seed": [0] * 3 + [1] * 3,
                           "sid_last": [1.0, 2.0, 3.0] * 2, "robustness_l2": [0.1, 0.2, 0.3] * 2,
                           "attack_success": [1.0, 0.5, 1.0, 1.0, 1.0, 1.0]})
    rule = VERDICTS.get("compression")
    v = rule(cells({"a": np.zeros((2, 2, 3))}), models, {})[-1]
    assert v.word == "INCONCLUSIVE" and "b seed 0: 50%" in v.measured
    models["attack_success"] = 1.0
    models.loc[models.seed == 1, "robustness_l2"] = [0.1, 0.25, 0.3]
    assert rule(cells({"a": np.zeros((2, 2, 3))}), models, {})[-1].word == "REPRODUCED"  # rho 1 on both seeds
