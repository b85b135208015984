"""The plug-in mechanism and the method contract: registries fill themselves on import, `requires_fit`
decides whether the training split is needed, and every method answers `attribute_batch`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_config, run_script
from fake_layouts import make_imagenet
from omegaconf import OmegaConf

from infoflow.attribution import METHODS
from infoflow.builders import build_method
from infoflow.cli.plugins import PLUGIN_GROUPS, name_plugins
from infoflow.data.imagefolder import ImageNetDataModule
from infoflow.models.zoo import get_model

ROOT = Path(__file__).resolve().parents[1]
#: every method of the project, by registry name
ALL_METHODS = {"random", "occlusion-8", "occlusion-14", "gradient", "saliency", "smoothgrad", "integrated-gradients",
               "guided-backprop", "lrp-a1b0", "lrp-eps5", "gradcam", "guided-gradcam", "pattern-attribution", "iba",
               "readout", "ground-truth", "attention-rollout"}


def test_importing_attribution_alone_registers_every_method_without_lightning() -> None:
    code = ("import sys, infoflow.attribution as a; "
            "print(','.join(a.METHODS.names())); print('pytorch_lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""}).stdout.split()
    assert set(out[0].split(",")) == ALL_METHODS and out[1] == "False"


def test_only_methods_that_estimate_from_data_require_fit() -> None:
    model = get_model("shapesnet", weights="none")
    vit = get_model("shapesvit", weights="none")  # attention rollout exists for ViTs only
    fitted = {name for name in ALL_METHODS - {"readout"}
              if METHODS.get(name)(vit if name == "attention-rollout" else model,
                                   **({"layer": "conv3"} if name == "iba" else {})).requires_fit}
    assert fitted == {"iba", "pattern-attribution"}


def _val_only_imagenet(tmp_path: Path) -> ImageNetDataModule:
    root = make_imagenet(tmp_path / "in", wnids=("n01", "n02"), n_train=0, n_val=2, with_xml=False)
    for wnid in ("n01", "n02"):
        (root / "train" / wnid).rmdir()
    (root / "train").rmdir()
    return ImageNetDataModule(str(root), image_size=32, resize=36, batch_size=4, num_workers=0)


def test_a_method_without_fit_needs_no_training_split(tmp_path: Path) -> None:
    """ImageNet with only val/ on disk (train/ is optional): gradient builds and explains; IBA, which
    estimates feature statistics on the training split, names the missing folder."""
    dm = _val_only_imagenet(tmp_path)
    model = get_model("shapesnet", weights="none", num_classes=dm.num_classes, input_size=dm.input_size)
    method = build_method(OmegaConf.create({"method": {"name": "gradient"}}), model, dm)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    maps = method.attribute_batch(batch, batch["label"])
    assert maps.shape == (4, 32, 32) and torch.isfinite(maps).all()
    with pytest.raises(FileNotFoundError, match="train"):
        build_method(OmegaConf.create({"method": {"name": "iba", "layer": "conv3", "estimator_samples": 4}}), model, dm)


def test_ground_truth_reads_the_batch_and_attribute_batch_defaults_to_attribute() -> None:
    model = get_model("shapesnet", weights="none")
    x = torch.randn(2, 3, 64, 64)
    mask = (torch.rand(2, 64, 64) > 0.5).long()
    batch = {"image": x, "label": torch.tensor([0, 1]), "mask": mask}
    truth = METHODS.get("ground-truth")(model)
    assert torch.equal(truth.attribute_batch(batch, batch["label"]), mask.float()) and not truth.images_only
    gradient = METHODS.get("gradient")(model)
    torch.testing.assert_close(gradient.attribute_batch(batch, batch["label"]), gradient.attribute(x, batch["label"]))


@pytest.mark.slow
def test_evaluate_cli_runs_imagenet_with_only_val(tmp_path: Path) -> None:
    """``python evaluate.py data=imagenet method=gradient`` end to end with only ``val/`` on disk."""
    root = make_imagenet(tmp_path / "in", wnids=("n01", "n02"), n_train=0, n_val=2, with_xml=False)
    shutil.rmtree(root / "train")
    run_script("evaluate.py", "data=imagenet", "method=gradient", f"data.root={root}", "data.image_size=32",
               "data.resize=36", "data.num_workers=0", "weights=none", "num_images=2", "logger=csv",
               f"paths.output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}")
    rows = pd.read_csv(tmp_path / "out" / "heatmaps.csv")
    assert len(rows) == 2 and set(rows.method) == {"gradient"} and set(rows.target_name) <= {"n01", "n02"}


def test_plugins_are_named_by_their_config_group_choice() -> None:
    """No plug-in YAML repeats its file name: the choice names it, also for Table 1's rows; a ``name`` that a
    config sets itself (a registered plug-in under another file name) is kept."""
    for group in PLUGIN_GROUPS:
        for path in (ROOT / "conf" / group).glob("*.yaml"):
            if path.stem == "timm" and group == "model":  # names the namespace entry of its arch: timm/<arch>
                assert OmegaConf.load(path)._get_node("name")._value() == "timm/${.arch}"
                continue
            assert "name" not in (OmegaConf.load(path) or {}) and "name" not in (OmegaConf.load(path).get("task") or {})
    cfg = compose_config("evaluate", ["experiment=table1", "method=gradcam", "model=vgg16"])
    assert (cfg.method.name, cfg.model.name, cfg.analysis.name) == ("gradcam", "vgg16", "table1")
    assert {label: row.name for label, row in cfg.analysis.rows.items()} == {
        "random": "random", "occlusion-8x8": "occlusion-8", "occlusion-14x14": "occlusion-14", "gradient": "gradient",
        "saliency": "saliency", "smoothgrad": "smoothgrad", "integrated-gradients": "integrated-gradients",
        "guided-backprop": "guided-backprop", "lrp-a1b0": "lrp-a1b0", "lrp-eps5": "lrp-eps5", "gradcam": "gradcam",
        "guided-gradcam": "guided-gradcam", "pattern-attribution": "pattern-attribution", "iba-beta1": "iba",
        "iba-beta10": "iba", "iba-beta100": "iba", "readout": "readout", "attention-rollout": "attention-rollout",
        "ground-truth": "ground-truth"}
    assert compose_config("train", ["task=prune"]).task.name == "prune"
    own = name_plugins(OmegaConf.create({"method": {"name": "iba", "beta": 1}}), {"method": "iba-fast"})
    assert own.method.name == "iba"
