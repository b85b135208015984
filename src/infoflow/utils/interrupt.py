"""Interruptions by a signal: SIGTERM (what SLURM sends) and SIGINT raise `Interrupted`.

Inside `lightning_stops_on_sigterm` a SIGTERM only sets Lightning's ``trainer.received_sigterm``: Lightning
then stops all processes at the next batch, together (the DDP-safe way). `install_sigterm_handler` is called
by the entry points (`infoflow.cli.entry`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_lightning_handles_sigterm = False


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; the entry point exits with ``128 + signum``.

    A `KeyboardInterrupt`, so that Lightning shuts down as on Ctrl-C (and stops its DDP processes).
    """

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = int(signum)
        self.message = message or f"interrupted by {signal.Signals(self.signum).name}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGTERM and _lightning_handles_sigterm:
        return  # Lightning's own handler (called before this one) has set trainer.received_sigterm
    raise Interrupted(signum)


def install_sigterm_handler() -> None:
    """Make a SIGTERM raise `Interrupted` (outside `lightning_stops_on_sigterm`)."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


@contextmanager
def lightning_stops_on_sigterm() -> Iterator[None]:
    """Within: a SIGTERM is left to Lightning's Trainer (it stops at the next batch; check
    ``trainer.received_sigterm`` afterwards). Outside: a SIGTERM raises `Interrupted` at once."""
    global _lightning_handles_sigterm
    before, _lightning_handles_sigterm = _lightning_handles_sigterm, True
    try:
        yield
    finally:
        _lightning_handles_sigterm = before
