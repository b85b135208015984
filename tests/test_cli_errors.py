"""Every user mistake on the command line: exit code 2, exactly one ``error:`` line naming the setting, and
no traceback. The real entry points run in-process (``runpy`` runs each script as ``__main__``);
the config check stops each row before any data is read or any model is built."""

from __future__ import annotations

import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config

from infoflow.cli.entry import USER_ERROR_EXIT
from infoflow.cli.settings import InputSizeWarning, check_config
from infoflow.iba.readout import META_KEY, STATE_PREFIX, ReadoutBottleneck
from infoflow.models.shapesnet import ShapesNet
from infoflow.models.zoo import get_model

ROWS = [  # (script, overrides, the setting the error line must name)
    ("evaluate", ["layer=conv9"], "conv9"),
    ("evaluate", ["method.layer=conv9"], "method.layer"),
    ("evaluate", ["analysis=table1", "analysis.rows.iba-beta10.layer=conv9"], "analysis.rows.iba-beta10.layer"),
    ("evaluate", ["analysis=layerwise", "analysis.layers=[conv9]"], "analysis.layers"),
    ("evaluate", ["weights=bogus"], "weights"),
    ("evaluate", ["method=readout"], "readout_ckpt"),
    ("evaluate", ["data.batch_size=0"], "data.batch_size"),
    ("evaluate", ["seed=abc"], "seed"),
    ("evaluate", ['method.beta="10"'], "method.beta"),
    ("evaluate", ["+method.foo=1"], "method.foo"),
    ("evaluate", ["analysis=table1", "analysis.rows.smoothgrad.samples=0"], "analysis.rows.smoothgrad.samples"),
    ("evaluate", ["analysis=table1", "analysis.rows.iba-beta1.steps=abc"], "analysis.rows.iba-beta1.steps"),
    ("evaluate", ["analysis=table1", "analysis.only=[nonexistent]"], "analysis.only"),
    ("evaluate", ["data=cifar10", "data.root=/nonexistent/cifar"], "data.root"),
    ("train", ["task=readout", "layer=conv9"], "task.layer"),
    ("train", ["task=classifier", "trainer.max_epochs=-1"], "trainer.max_epochs"),
    ("train", ["task=classifier", "seed=abc"], "seed"),
    ("train", ["task=prune", "weights=none"], "weights"),
    ("train", ["experiment=null_shapes", "task.jobs=0"], "task.jobs"),
    ("evaluate", ["method=pattern-attribution", "model=resnet20"], "method=pattern-attribution model=resnet20"),
    ("evaluate", ["model.num_classes=1"], "model.num_classes"),
    ("evaluate", ["data.num_classes=1"], "data.num_classes"),
    ("train", ["task=classifier", "data.num_classes=1"], "data.num_classes"),
    ("evaluate", ["-m", "beta=1,abc"], "method.beta"),  # the sweep stops before its first job
]


def run_cli(script: str, overrides: list[str], setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> str:
    """Run `script` as ``python <script>.py <overrides>``; it must stop with one error line naming `setting`."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("INFOFLOW_USER_HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *overrides, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep",
                                      f"paths.cache_dir={tmp_path}/cache", "logger=csv"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / f"{script}.py"), run_name="__main__")  # as `python <script>.py`
    err = capsys.readouterr().err
    assert exit_info.value.code == USER_ERROR_EXIT, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and setting in lines[0], err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("sweep/*/*.csv")) and not (tmp_path / "run" / "heatmaps.csv").exists()  # no work
    return lines[0]


@pytest.mark.parametrize(("script", "overrides", "setting"), ROWS, ids=[" ".join(r[1]) + f" ({r[0]})" for r in ROWS])
def test_a_user_mistake_is_one_error_line_and_exit_code_2(
    script: str, overrides: list[str], setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_cli(script, overrides, setting, tmp_path, monkeypatch, capsys)


def readout_file(path: Path, layer: str) -> Path:
    """A readout checkpoint of a random shapesnet with its bottleneck at `layer` (as task=readout saves it)."""
    readout = ReadoutBottleneck(get_model("shapesnet", "none", 4, (3, 64, 64)), layer, ["conv2", "conv3", "fc"])
    state = {f"{STATE_PREFIX}{k}": v for k, v in readout.state_dict().items()}
    torch.save({META_KEY: readout.meta(), "state_dict": state}, path)
    return path


@pytest.mark.parametrize("kind", ["classifier", "other-layer", "other-model"])
def test_a_wrong_readout_checkpoint_is_one_error_line(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "ckpt.pt"
    if kind == "classifier":  # a classifier's model.pt
        torch.save(ShapesNet(4).state_dict(), path)
        needle = "not a readout checkpoint"
    else:
        readout_file(path, "conv2")
        needle = "trained for layer conv2, but method.layer=conv3" if kind == "other-layer" else "model"
    extra = ["model=shapesvit", "layer=block1"] if kind == "other-model" else []
    line = run_cli("evaluate", ["method=readout", f"readout_ckpt={path}", "weights=none", *extra], "readout_ckpt=",
                   tmp_path, monkeypatch, capsys)
    assert needle in line


def test_default_weights_on_another_image_size_warn_with_the_setting(tmp_path: Path) -> None:
    def config(*overrides: str):
        return compose_config("evaluate", [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}",
                                           "weights=default", *overrides])

    with pytest.warns(InputSizeWarning, match=r"data.image_size=32: the default weights of model shapesnet were "
                                              r"trained on 64 px.*set data.image_size=64"):
        check_config(config("data.image_size=32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_config(config())  # 64 px: silent
        check_config(config("data.image_size=32", "weights=none"))  # random weights: no trained size


def test_a_bad_override_in_the_last_stage_stops_the_study_before_any_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    line = run_cli("train", ["experiment=distillation_shapes", "+task.stages.layerwise.overrides.layer=conv9"],
                   "task.stages.layerwise", tmp_path, monkeypatch, capsys)
    assert "conv9" in line
    assert not list((tmp_path / "run").glob("*/done.json")) and not list((tmp_path / "run").rglob("*.pt"))


def test_a_readout_checkpoint_for_this_model_and_layer_passes_the_check(tmp_path: Path) -> None:
    path = readout_file(tmp_path / "ckpt.pt", "conv3")
    cfg = compose_config("evaluate", [f"paths.output_dir={tmp_path}", "weights=none", "method=readout",
                                      f"readout_ckpt={path}", "layer=conv3"])
    assert check_config(cfg) is cfg
