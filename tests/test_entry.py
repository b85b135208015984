"""The command line: one-line user errors (exit code 2), tracebacks for bugs, SIGTERM/SIGINT with a resume
hint, and the settings that are checked before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config
from hydra.errors import InstantiationException

from infoflow.analyses import run_analysis
from infoflow.cli.entry import user_error_message
from infoflow.errors import ConfigError, DataError
from infoflow.registry import UnknownNameError
from infoflow.tasks import run_task
from infoflow.utils.checkpoint import CheckpointError, load_file, load_state_dict_file

TINY = ["data.image_size=32", "data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=16"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a user who did not set HYDRA_FULL_ERROR (conftest's run_script sets it)."""
    env = {k: v for k, v in os.environ.items() if "HYDRA_FULL_ERROR" not in k}
    return {**env, "WANDB_MODE": "offline", **extra}


def cli(script: str, *overrides: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "HYDRA_FULL_ERROR" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------- user errors on the command line


@pytest.mark.parametrize(("script", "override", "valid"), [
    ("train.py", "model=foo", "shapesnet"),
    ("train.py", "task=foo", "classifier, decoder, distill, prune, readout"),
    ("train.py", "data=foo", "shapes"),
    ("evaluate.py", "method=foo", "gradcam"),
    ("evaluate.py", "analysis=foo", "coherency, grid, heatmaps, layerwise, table1"),
])
def test_an_unknown_config_option_is_one_line_listing_the_choices(script: str, override: str, valid: str) -> None:
    assert_one_line_error(cli(script, override), override, "choose one of", valid)


def test_hydra_full_error_still_shows_the_traceback() -> None:
    proc = cli("train.py", "model=foo", HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "model/foo" in proc.stderr


def test_user_errors_inside_the_run_are_one_line(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"x": EvilPickle()}, evil)
    proc = cli("evaluate.py", f"weights={evil}", *TINY, "num_images=1", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(proc, str(evil), "could run code")
    assert not (tmp_path / "pwned").exists()
    proc = cli("train.py", "beta=nan", "logger=csv", f"hydra.run.dir={tmp_path / 'run2'}")
    assert_one_line_error(proc, "beta must be a finite number >= 0", "nan")


class EvilPickle:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ.get('TMPDIR', '/tmp')) / 'pwned'}",))


def test_user_error_message_tells_user_errors_from_bugs() -> None:
    assert user_error_message(ConfigError("bad\n  setting")) == "bad setting"
    assert "valid models" in user_error_message(UnknownNameError("unknown model 'x'; valid models: a, b"))
    wrapped = InstantiationException("Error in call to target 'X'")
    wrapped.__cause__ = DataError("/data does not exist")
    assert user_error_message(wrapped) == "/data does not exist"
    assert user_error_message(InstantiationException("Error in call")) is None
    assert user_error_message(RuntimeError("shape mismatch")) is None
    assert user_error_message(ValueError("a bug")) is None


# ---------------------------------------------------------------- checkpoints


def test_bad_checkpoint_files_are_data_errors_naming_the_file(tmp_path: Path) -> None:
    empty, junk, truncated, evil, listed = (tmp_path / f"{n}.pt" for n in ("empty", "junk", "trunc", "evil", "list"))
    empty.write_bytes(b"")
    junk.write_bytes(b"not a torch file")
    torch.save({"w": torch.zeros(3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    torch.save({"x": EvilPickle()}, evil)
    torch.save([torch.zeros(1)], listed)
    cases = [(tmp_path / "missing.pt", "not found"), (empty, "is empty"), (junk, "corrupt"),
             (truncated, "corrupt, truncated"), (evil, "could run code")]
    for path, reason in cases:
        with pytest.raises(DataError, match=reason) as info:
            load_file(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=f"{listed} does not hold a state_dict"):
        load_state_dict_file(listed)
    with pytest.raises(ValueError):  # CheckpointError stays a ValueError for existing callers
        load_file(junk)


# ---------------------------------------------------------------- settings checked before any work


def compose_cfg(name: str, tmp_path: Path, *overrides: str):
    return compose_config(name, [*TINY, "logger=csv", f"paths.output_dir={tmp_path}",
                                 f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


@pytest.mark.parametrize(("overrides", "message"), [
    (["num_images=0"], "num_images must be an integer >= 1, got 0"),
    (["num_images=-3"], "num_images must be an integer >= 1, got -3"),
    (["experiment=table1", "num_images=0"], "num_images must be an integer >= 1, got 0"),
    (["target=foo"], r"target=foo: not a valid choice; choose one of: label \| pred"),
    (["beta=inf"], "beta must be a finite number >= 0"),
    (["beta=-0.5"], "beta must be a finite number >= 0"),
])
def test_evaluate_settings_are_checked_before_any_work(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_analysis(compose_cfg("evaluate", tmp_path, *overrides))
    assert not (tmp_path / "heatmaps").exists() and not list(tmp_path.glob("*.csv"))


def test_table1_honours_num_images(tmp_path: Path) -> None:
    cfg = compose_cfg("evaluate", tmp_path, "experiment=table1", "num_images=5", "target=pred")
    assert (cfg.analysis.num_images, cfg.analysis.target) == (5, "pred")
    assert compose_cfg("evaluate", tmp_path, "experiment=table1").analysis.num_images == 32
    imagenet = compose_config("evaluate", ["experiment=table1_imagenet", "num_images=7"])
    assert imagenet.analysis.num_images == 7


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_trainer_without_cuda_points_to_ddp_cpu(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*use trainer=ddp_cpu"):
        run_task(compose_cfg("train", tmp_path, "trainer=ddp"))
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*use trainer=cpu"):
        run_analysis(compose_cfg("evaluate", tmp_path, "trainer=gpu", "experiment=table1"))


def test_beta_zero_is_valid_for_training(tmp_path: Path) -> None:
    metrics = run_task(compose_cfg("train", tmp_path, "beta=0", "weights=none", "trainer.max_epochs=1",
                                   "callbacks=none", "task.num_heatmaps=0", "task.estimator_samples=16"))
    assert metrics["val/loss"] == pytest.approx(metrics["val/ce"], rel=1e-6)  # no information term


def test_the_run_directory_is_unique_within_a_second() -> None:
    proc = cli("train.py", "--cfg", "hydra", "-p", "hydra.run.dir")
    assert proc.returncode == 0 and "%f" not in proc.stdout
    stamp = proc.stdout.strip().rsplit("/", 1)[-1]
    assert len(stamp.split("-")[-1]) == 6, stamp  # microseconds after the seconds


# ---------------------------------------------------------------- interruptions


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.communicate()[1][-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_an_interrupted_training_exits_non_zero_with_the_resume_command(tmp_path: Path, signum: int) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "task=classifier", "weights=none", *TINY, "logger=csv",
         "trainer.max_epochs=1000", "callbacks.progress_bar=null", f"hydra.run.dir={run}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    wait_for(run / "checkpoints" / "last.ckpt", proc, timeout=240)  # at least one epoch is saved
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"interrupted by {signal.Signals(signum).name}" in stderr and "Traceback" not in stderr
    hint = stderr.strip().splitlines()[-1].strip()
    assert hint.startswith("python train.py task=classifier") and hint.endswith(f"ckpt_path=last hydra.run.dir={run}")
    assert "trainer.max_epochs=1000" in hint and hint.count("hydra.run.dir=") == 1
    assert "interrupted by" in (run / "train.log").read_text()  # logged into the run's log too
    assert not (run / "model.pt").exists()  # the run did not finish


def test_evaluate_stops_at_once_on_sigterm_while_preparing_data(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # a training split this size takes minutes to render before the estimator can be fitted
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "evaluate.py"), "data.num_train=1000000", "data.image_size=32", "weights=none", "logger=csv",
         f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    wait_for(run / ".hydra" / "config.yaml", proc, timeout=120)  # the task function has started
    time.sleep(2)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted by SIGTERM" in stderr, stderr[-3000:]
    assert time.monotonic() - start < 15


def test_layerwise_ru_without_decoders_fails_before_the_sid_work(tmp_path: Path, random_shapesnet: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import infoflow.analyses.layerwise as layerwise
    from infoflow.discarding import MissingDecoderError

    def no_sid(*args, **kwargs):
        raise AssertionError("the SID work started before the decoders were checked")

    monkeypatch.setattr(layerwise, "layerwise_sid", no_sid)
    cfg = compose_cfg("evaluate", tmp_path, "analysis=layerwise", "analysis.ru=true", "analysis.layers=[conv2]",
                      f"weights={random_shapesnet}", f"analysis.decoder_dir={tmp_path / 'none'}")
    with pytest.raises(MissingDecoderError, match="python train.py task=decoder model=shapesnet layer=conv2"):
        run_analysis(cfg)
    assert user_error_message(MissingDecoderError("conv2", "shapesnet")) is not None  # one line on the CLI
