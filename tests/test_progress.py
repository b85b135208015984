"""Progress bars: the study's bar line is arithmetic on the counts; SID's live bars count its steps and rows
and never change a result."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2
from infoflow.utils import progress as progress_module
from infoflow.utils.progress import UnitProgress, bar_line, live_bars
from tests.test_discarding import LAYERS, MEAN, STD, small_cnn, smooth_images


def test_the_bar_line_fills_in_proportion_and_projects_the_time_left() -> None:
    line = bar_line(3, 6, 120.0, width=10)
    assert line.startswith("━" * 5 + "╺" + "━" * 4 + " 3/6")
    assert "0:02:00 elapsed" in line and "0:02:00 left" in line  # 40 s per unit, 3 to go
    assert bar_line(6, 6, 61.0, width=10).startswith("━" * 10 + " 6/6") and "0:00:00 left" in bar_line(6, 6, 61.0)
    assert "-:--:-- left" in bar_line(0, 4, 0.0)


def test_a_study_counts_its_units_across_calls() -> None:
    units = UnitProgress(3)
    assert [units.finished().split()[1] for _ in range(3)] == ["1/3", "2/3", "3/3"]


def test_live_bars_are_silent_off_a_terminal_and_disabled_inside_lightning(monkeypatch) -> None:
    with live_bars({"a": ("a", 3, "it")}, enabled=False) as advance:
        advance("a", 1)  # a no-op, no rich display
    buffer = io.StringIO()
    monkeypatch.setattr(progress_module, "Console", lambda **kw: Console(file=buffer, force_terminal=False))
    with live_bars({"a": ("a", 3, "it")}) as advance:
        advance("a", 1)
    assert buffer.getvalue() == ""


def test_sid_bars_count_every_step_and_projection_row_and_leave_the_result_unchanged(monkeypatch) -> None:
    net = small_cnn()
    x = smooth_images(2)
    features = LayerFeatures(net, LAYERS, MEAN, STD)
    df2 = {k: v.value for k, v in estimate_delta_f2(features, x, samples=4).items()}
    cfg = SIDConfig(steps=6, eval_samples=8, max_rows=16)  # 6 (image, layer) pairs in chunks of 4 and 2
    counted: dict[str, float] = {}
    rows_seen: list[int] = []

    class Recording:
        def __init__(self, *columns, console, transient) -> None:  # noqa: ANN001
            self.totals: dict[int, float | None] = {}

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc) -> None:  # noqa: ANN002
            return None

        def add_task(self, description: str, total: float | None, unit: str) -> int:
            self.totals[len(self.totals)] = total
            counted[description.split()[1]] = 0.0
            return len(self.totals) - 1

        def advance(self, task: int, amount: float) -> None:
            counted[list(counted)[task]] += amount

    forward = features.forward

    def spy(x01, groups=None):  # noqa: ANN001, ANN202
        if groups is not None and not torch.is_grad_enabled():
            rows_seen.append(x01.shape[0])
        return forward(x01, groups)

    monkeypatch.setattr(progress_module, "Progress", Recording)
    plain = compute_sid(features, x, df2, cfg, progress=False)
    monkeypatch.setattr(features, "forward", spy)
    shown = compute_sid(features, x, df2, cfg, progress=True)
    assert torch.equal(plain.log_sigma, shown.log_sigma) and torch.equal(plain.ratio_fresh, shown.ratio_fresh)
    assert counted["steps"] == cfg.steps * len(cfg.chunks([(0, "a")] * 6, x.device))
    # the projection's rows: every no-grad grouped pass except the start-up's 2 passes of `samples` draws per pair
    startup = 2 * 6 * cfg.samples
    assert counted["projection"] == pytest.approx(sum(rows_seen) - startup)
