"""Every option of every Hydra config group composes and resolves, and names things that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

import infoflow.studies  # noqa: F401  (registers task=study)
from infoflow.analyses import ANALYSES
from infoflow.attribution import METHODS
from infoflow.data.base import ImageDataModule
from infoflow.models.zoo import MODELS
from infoflow.tasks import TASKS

CONF = Path(__file__).resolve().parents[1] / "conf"
#: config groups selected by each primary config (hydra/launcher is a Hydra group, composed from train);
#: an experiment belongs to one of them and is tested in `test_experiment_composes`
GROUPS = {
    "train": ["model", "data", "trainer", "logger", "callbacks", "paths", "task", "hparams_search", "hydra/launcher"],
    "evaluate": ["model", "data", "method", "analysis", "logger", "paths"],
}
CASES = [(primary, group, option.stem) for primary, groups in GROUPS.items() for group in groups
         for option in sorted((CONF / group).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_resolved(primary: str, overrides: list[str], tmp_path: Path) -> DictConfig:
    """The composed config with every interpolation of the job config (and the hydra launcher/sweeper) resolved."""
    cfg = compose_config(primary, [*overrides, f"paths.output_dir={tmp_path}"], hydra=True)
    HydraConfig.instance().set_config(cfg)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
    for node in ("launcher", "sweeper"):
        OmegaConf.to_container(cfg.hydra[node], resolve=True, throw_on_missing=False)
    return cfg


def zoo_layers(name: str) -> dict[str, str]:
    """Paper layer names of zoo model `name`, from its architecture built without allocating weights."""
    entry = MODELS.get(name)()
    with torch.device("meta"):
        return entry.layers(entry.build(entry.num_classes))


def test_every_group_and_option_is_covered() -> None:
    on_disk = {p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")} - {"."}
    assert {group for _, group, _ in CASES} | {"experiment"} == on_disk - {"hydra"}


@pytest.mark.parametrize(("primary", "group", "option"), CASES, ids=[f"{p}:{g}={o}" for p, g, o in CASES])
def test_option_composes(primary: str, group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if group == "hydra/launcher":
        overrides += ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    cfg = compose_resolved(primary, overrides, tmp_path)
    if group == "model":
        # conf/model/timm.yaml names the registry namespace entry of its architecture: timm/<arch>
        name = f"timm/{cfg.model.arch}" if option == "timm" else option
        assert cfg.model.name == name and name in MODELS
        layers = zoo_layers(name)
        for layer in [cfg.model.default_layer, *cfg.model.readout_layers]:
            assert layer in layers, f"{option}: layer {layer} not in {list(layers)}"
    elif group == "data":
        assert issubclass(get_class(cfg.data._target_), ImageDataModule)
    elif group == "trainer":
        assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
        assert cfg.trainer.default_root_dir == str(tmp_path)
    elif group in ("logger", "callbacks"):
        base = "pytorch_lightning.loggers.Logger" if group == "logger" else "pytorch_lightning.Callback"
        for node in cfg[group].values():
            assert issubclass(get_class(node._target_), get_class(base))
    elif group == "task":
        assert cfg.task.name == option and option in TASKS
    elif group == "method":
        assert cfg.method.name in METHODS
    elif group == "analysis":
        assert cfg.analysis.name in ANALYSES
    elif group == "hparams_search":
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert {"beta", "task.lr"} <= set(cfg.hydra.sweeper.params)
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
        assert all(o.is_sweep_override() for o in parsed)
        assert cfg.optimized_metric == "val/objective"
    elif group == "hydra/launcher":
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)


@pytest.mark.parametrize("option", EXPERIMENTS)
def test_experiment_composes(option: str, tmp_path: Path) -> None:
    """An experiment is for train.py or for evaluate.py: it composes and resolves with one of them."""
    errors = []
    for primary in GROUPS:
        try:
            cfg = compose_resolved(primary, [f"experiment={option}"], tmp_path)
        except ConfigCompositionException as err:
            errors.append(f"{primary}: {err}")
            continue
        if primary == "train" and cfg.task.name == "readout":
            layers = zoo_layers(cfg.model.name)
            assert cfg.layer in layers and all(layer in layers for layer in cfg.task.readout_layers)
        return
    pytest.fail(f"experiment={option} composes with neither train nor evaluate: {errors}")


def test_defaults_train_a_readout_and_evaluate_takes_a_readout_checkpoint(tmp_path: Path) -> None:
    train = compose_resolved("train", [], tmp_path)
    assert (train.task.name, train.model.name, train.data._target_.rsplit(".", 1)[-1]) == (
        "readout", "shapesnet", "ShapesDataModule")
    assert list(train.task.readout_layers) == list(train.model.readout_layers)
    vgg = compose_resolved("train", ["model=vgg16", "beta=10"], tmp_path)
    assert (vgg.layer, list(vgg.task.readout_layers)) == ("conv4_1", ["conv3_1", "conv4_1", "conv5_1", "conv5_3", "fc8"])
    ev = compose_resolved("evaluate", ["method=readout", "readout_ckpt=/x/readout.pt"], tmp_path)
    assert ev.method.readout_ckpt == "/x/readout.pt" and ev.method.layer == ev.layer
    assert ev.method.data == ev.data


def test_statistics_cached_for_the_default_weights_follow_their_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches keyed on weights=default (estimators, delta_f²) must not outlive a new default model."""
    from infoflow.builders import weights_id
    from infoflow.data import shapes
    from infoflow.models import pretrained

    before = weights_id("default", "shapesnet")
    assert before == f"default-{pretrained.default_weights_version()}" and before.startswith("default-v")
    monkeypatch.setitem(pretrained.SHAPESNET_RECIPE, "epochs", 13)
    after_recipe = weights_id("default", "shapesnet")
    monkeypatch.setattr(shapes, "NOISE_STD", shapes.NOISE_STD + 0.01)
    assert len({before, after_recipe, weights_id("default", "shapesnet")}) == 3
    assert weights_id("none", "shapesnet") == "none"


def test_default_weights_of_each_model_have_their_own_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """shapesvit's default weights follow shapesvit's recipe, not shapesnet's; a model without default weights
    keeps the plain name (building it refuses ``weights=default``)."""
    from infoflow.builders import weights_id
    from infoflow.models import pretrained
    from infoflow.utils.cache import cache_key

    net, vit = weights_id("default", "shapesnet"), weights_id("default", "shapesvit")
    assert net != vit and vit == f"default-{pretrained.default_weights_version('shapesvit')}"
    monkeypatch.setitem(pretrained.SHAPESVIT_RECIPE, "epochs", pretrained.SHAPESVIT_RECIPE["epochs"] + 1)
    assert weights_id("default", "shapesvit") != vit and weights_id("default", "shapesnet") == net
    assert cache_key("shapesvit", "default", "block3") != cache_key("shapesnet", "default", "block3")
    assert weights_id("default", "vgg16") == "default"
