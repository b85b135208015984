"""One owner per setting: the method node's own values are what the built method uses, what its cache key
and file name are made of, and what the outputs record; the top-level shorthands only feed that node."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, compose_config
from omegaconf import OmegaConf

from infoflow.builders import build_method
from infoflow.models.zoo import get_model
from infoflow.utils.cache import cache_path

METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


@pytest.mark.parametrize("overrides", [[], ["method.layer=conv2"], ["layer=conv1"], ["method.layer=conv2", "layer=conv1"]])
def test_the_estimator_cache_is_keyed_on_the_layer_the_bottleneck_uses(overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_config("evaluate", ["method=iba", f"paths.cache_dir={tmp_path}", *overrides])
    used = cfg.method.layer
    assert used == {"method.layer=conv2": "conv2"}.get(overrides[0] if overrides else "", "conv1" if overrides else "conv3")
    expected = cache_path(cfg, "estimators", used, samples=cfg.method.estimator_samples)
    assert Path(cfg.method.estimator_cache) == expected and f"-{used}-" in Path(expected).name
    model = get_model(cfg.model.name, "none", cfg.data.num_classes, (3, cfg.data.image_size, cfg.data.image_size))
    method = build_method(cfg, model)
    assert method.layer == model.layer_path(used) and str(method.estimator_cache) == str(expected)
    assert method.beta == float(cfg.method.beta)


def test_a_table1_row_keys_its_estimator_on_its_own_layer(tmp_path: Path) -> None:
    cfg = compose_config("evaluate", ["analysis=table1", f"paths.cache_dir={tmp_path}",
                                      "analysis.rows.iba-beta10.layer=conv2"])
    row = cfg.analysis.rows["iba-beta10"]
    assert row.layer == "conv2" and f"-{row.layer}-" in Path(row.estimator_cache).name
    assert Path(row.estimator_cache) == cache_path(cfg, "estimators", "conv2", samples=row.estimator_samples)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_node_owns_its_layer_and_beta(method: str) -> None:
    """The shorthands reach the method node; a method-node override wins and is what the node records."""
    cfg = compose_config("evaluate", [f"method={method}", "layer=conv1", "beta=3"])
    node = OmegaConf.to_container(cfg.method, resolve=False)
    for key, shorthand in (("layer", "conv1"), ("beta", 3)):
        if node.get(key) == f"${{{key}}}":  # the node takes the shorthand (gradcam's own layer: null does not)
            assert cfg.method[key] == shorthand
            again = compose_config("evaluate", [f"method={method}", "layer=conv1", "beta=3", f"method.{key}=2"])
            assert str(again.method[key]) == "2" and again[key] == shorthand


def test_the_readout_task_owns_its_layer_and_beta() -> None:
    cfg = compose_config("train", ["task=readout", "layer=conv1", "beta=3"])
    assert (cfg.task.layer, cfg.task.beta) == ("conv1", 3)


def test_no_consumer_reads_the_top_level_shorthands() -> None:
    """``cfg.layer`` / ``cfg.beta`` are read only through the owning node (method or task)."""
    readers = [str(p.relative_to(ROOT)) for p in (ROOT / "src" / "infoflow").rglob("*.py")
               if any(s in p.read_text() for s in ("cfg.layer", "cfg.beta", '_root_.layer'))]
    assert readers == [], readers


@pytest.mark.parametrize(("model", "trained"), [("shapesnet", True), ("shapesvit", True), ("resnet18", True),
                                                ("resnet20", False), ("shapesnet_revised", False)])
def test_every_task_asks_the_model_entry_whether_default_weights_are_trained(model: str, trained: bool) -> None:
    from infoflow.errors import ConfigError
    from infoflow.models.entry import MODELS
    from infoflow.tasks.common import require_trained

    assert (MODELS.get(model)().default_weights is not None) == trained
    if trained:
        require_trained(model, "default", "the model to prune", "weights")
    else:
        with pytest.raises(ConfigError, match="weights=default means an untrained"):
            require_trained(model, "default", "the model to prune", "weights")
    with pytest.raises(ConfigError, match="weights=none"):
        require_trained(model, "none", "the model to prune", "weights")


def test_the_classifier_task_starts_from_scratch_unless_told_and_keeps_weights_default() -> None:
    assert compose_config("train", ["task=classifier"]).weights == "none"
    assert compose_config("train", ["task=classifier", "model=resnet18", "weights=default"]).weights == "default"
