"""Readout training under Lightning DDP with 2 CPU processes (gloo): it runs, every rank uses the statistics of
one process over all the data, and the logged validation metrics are reduced over both ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_script

from infoflow.data.shapes import ShapesDataModule
from infoflow.iba.estimator import Estimator
from infoflow.iba.readout import ReadoutIBA, fit_statistics
from infoflow.models.zoo import get_model

SIZE = 32
DATA = {"image_size": SIZE, "num_train": 32, "num_val": 16, "num_test": 16, "batch_size": 8}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(run dir, estimator cache dir, weights file) of a 1-epoch 2-process run."""
    root = tmp_path_factory.mktemp("ddp")
    weights = root / "shapesnet32.pt"
    torch.manual_seed(0)
    torch.save(get_model("shapesnet", "none", 4, (3, SIZE, SIZE)).module.state_dict(), weights)
    run, cache = root / "run", root / "cache"
    run_script("train.py", "trainer=ddp_cpu", f"weights={weights}", *[f"data.{k}={v}" for k, v in DATA.items()],
               "trainer.max_epochs=1", "logger=csv", "callbacks.progress_bar=null", f"paths.cache_dir={cache}",
               f"hydra.run.dir={run}")
    return run, cache, weights


def test_ddp_training_runs_on_both_ranks(ddp_run: tuple[Path, Path, Path]) -> None:
    run, _, _ = ddp_run
    record = json.loads((run / "metrics.json").read_text())
    # 32 training images, 2 ranks, batch 8: 2 steps per epoch on each rank
    assert (record["epochs"], record["global_step"]) == (1, 2)
    assert (run / "train_ddp_process_1.log").is_file()  # Lightning launched the second rank
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "readout.pt").is_file()


def test_ddp_statistics_equal_the_single_process_ones(ddp_run: tuple[Path, Path, Path]) -> None:
    run, cache, weights = ddp_run
    model = get_model("shapesnet", str(weights), 4, (3, SIZE, SIZE))
    readout = ReadoutIBA.load(model, run / "readout.pt").readout
    dm = ShapesDataModule(**DATA)
    dm.setup("fit")
    single = fit_statistics(readout, dm.train_dataloader(), max_samples=5000)
    files = sorted((cache / "estimators").glob("*.pt"))
    assert len(files) == len(readout.stat_layers) == 4
    for name, path in readout.stat_layers.items():
        [file] = [f for f in files if f"-{name}-" in f.name]
        ddp = Estimator(readout.shapes[path]).load(file)
        assert int(ddp.n) == int(single[name].n) == 32  # both ranks' 16 images were summed
        for key in ("s1", "s2", "nonzero"):
            assert torch.allclose(getattr(ddp, key), getattr(single[name], key), rtol=1e-10, atol=1e-10)
    # the statistics in the trained readout (identical on every rank) are those of one process
    assert torch.allclose(readout.bottleneck.std, single["conv3"].std, rtol=1e-6)
    assert torch.allclose(readout.readout_norm(0)[0], 1 / single["conv2"].std, rtol=1e-6)


def test_ddp_validation_metrics_are_reduced_over_ranks(ddp_run: tuple[Path, Path, Path]) -> None:
    """L_I/k and the original model's accuracy do not depend on the noise: the value logged under DDP must
    equal the single-process value over the whole validation set (rank 0 alone saw only half of it)."""
    run, _, weights = ddp_run
    logged = json.loads((run / "metrics.json").read_text())["metrics"]
    model = get_model("shapesnet", str(weights), 4, (3, SIZE, SIZE))
    readout = ReadoutIBA.load(model, run / "readout.pt").readout
    dm = ShapesDataModule(**DATA)
    dm.setup("validate")
    info, correct = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            out = readout(batch["image"], noisy=False)
            info.append(out.info)
            correct.append(out.logits.argmax(1) == batch["label"])
    info = torch.cat(info)
    assert logged["val/info"] == pytest.approx(info.mean().item(), rel=1e-5)
    assert logged["val/top1_orig"] == pytest.approx(torch.cat(correct).float().mean().item(), abs=1e-6)
    # DistributedSampler gives rank 0 the images 0, 2, 4, ...: its local mean differs, so this checks the reduction
    assert abs(info[0::2].mean().item() - info.mean().item()) > 1e-4
