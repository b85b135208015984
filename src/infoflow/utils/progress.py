"""Progress in Lightning's style: live bars for long loops (SID's steps and projection), and one bar line per
finished unit for work that Lightning's own bars run inside (a study's stages and seeds).

Live bars are drawn on a terminal only (rich's `Progress`, with the columns of Lightning's
`RichProgressBar`: bar, done/total, elapsed • remaining, rate); elsewhere (logs, tests, CI) they are silent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: a bar's advance: ``advance(task, amount)``
Advance = Callable[[str, float], None]


def _columns() -> tuple:
    return (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("•"), TimeRemainingColumn(),
            TextColumn("{task.speed:.1f} {task.fields[unit]}/s", style="dim"))


@contextmanager
def live_bars(tasks: dict[str, tuple[str, float | None, str]], enabled: bool | None = None) -> Iterator[Advance]:
    """Live bars, one per entry ``key: (description, total or None, unit)``; yields ``advance(key, amount)``.

    `enabled`: None draws them when stderr is a terminal; False never (e.g. inside Lightning's own bars).
    """
    console = Console(stderr=True)
    if enabled is False or (enabled is None and not console.is_terminal):
        yield lambda key, amount=1: None
        return
    with Progress(*_columns(), console=console, transient=True) as progress:
        ids: dict[str, TaskID] = {k: progress.add_task(d, total=t, unit=u) for k, (d, t, u) in tasks.items()}
        yield lambda key, amount=1: progress.advance(ids[key], amount)


def bar_line(done: int, total: int, elapsed: float, width: int = 24) -> str:
    """``━━━━━━━━━━━━╺━━━━━━━━━━━ 3/6 • 0:02:13 elapsed • 0:02:13 left`` (the time left at the mean so far)."""
    filled = round(width * done / total) if total else width
    bar = "━" * filled + ("╺" + "━" * (width - filled - 1) if filled < width else "")
    left = elapsed / done * (total - done) if done else float("nan")
    return f"{bar} {done}/{total} • {_clock(elapsed)} elapsed • {_clock(left)} left"


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class UnitProgress:
    """Counts finished units (a study's stage x seed runs) for the bar line printed after each."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def finished(self) -> str:
        """Count one unit; its bar line (`bar_line`)."""
        self.done += 1
        return bar_line(self.done, self.total, time.perf_counter() - self.start)
