"""Every user mistake on the command line: exit code 2, exactly one ``error:`` line naming the setting, and
no traceback. The real entry points run in-process (``runpy`` runs each script as ``__main__``);
the config check stops each row before any data is read or any model is built."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from infoflow.cli.entry import USER_ERROR_EXIT

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
    ("evaluate", ["-m", "beta=1,abc"], "method.beta"),  # the sweep stops before its first job
]


@pytest.mark.parametrize(("script", "overrides", "setting"), ROWS, ids=[" ".join(r[1]) + f" ({r[0]})" for r in ROWS])
def test_a_user_mistake_is_one_error_line_and_exit_code_2(
    script: str, overrides: list[str], setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
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
