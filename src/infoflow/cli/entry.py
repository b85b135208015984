"""The wrapper around the Hydra `main` of ``train.py`` and ``evaluate.py``: user errors and interruptions.

Use both parts: `reports_user_errors` under ``@hydra.main`` (errors of the task function) and `run_entry`
around the decorated main (errors of the command line and the config composition):

    @hydra.main(version_base="1.3", config_path="conf", config_name="train")
    @reports_user_errors
    def main(cfg): ...

    if __name__ == "__main__":
        run_entry(main)

- A user error (`infoflow.errors.UserError`, or Hydra's own config errors such as ``model=foo``) prints
  one line, ``error: <message>``, on stderr and exits with code 2, without a traceback. With
  ``HYDRA_FULL_ERROR=1`` set, the traceback is shown as well. Any other exception is a bug and keeps its
  traceback.
- SIGTERM (what SLURM sends) and SIGINT raise `infoflow.utils.interrupt.Interrupted`: the entry point
  prints its message (the training tasks put the resume command into it) and exits with 128 + the signal
  number (143, 130).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import (
    CompactHydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from infoflow.errors import UserError
from infoflow.utils.interrupt import Interrupted, install_sigterm_handler

#: exit code of a user error (as argparse uses for bad arguments)
USER_ERROR_EXIT = 2
#: the user's own HYDRA_FULL_ERROR, kept here for the DDP processes that Lightning starts with our environment
_USER_FULL_ERROR = "INFOFLOW_USER_HYDRA_FULL_ERROR"


class UserErrorExit(SystemExit):
    """A user error of the task function, carried past Hydra's job runner (a SystemExit: Hydra neither
    catches it nor prints the job's overrides) to `run_entry`, which prints it."""

    def __init__(self, message: str) -> None:
        super().__init__(USER_ERROR_EXIT)
        self.message = message


def _one_line(text: str) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line, without the search path and key details."""
    lines = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not line.startswith(("full_key:", "object_type=", "reference_type=", "provider=")):
            lines.append(line)
    return " ".join(lines)


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug (which keeps its traceback)."""
    seen: BaseException | None = err
    while seen is not None:  # a UserError raised inside a `_target_` constructor arrives wrapped by Hydra
        if isinstance(seen, UserError):
            return _one_line(str(seen))
        seen = seen.__cause__
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {_one_line(err.message)}"
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group}={name}: unknown {group}; choose one of: {', '.join(err.options)}"
    if isinstance(err, CompactHydraException) and not isinstance(err, InstantiationException):
        cause = f" ({_one_line(str(err.__cause__))})" if isinstance(err.__cause__, OmegaConfBaseException) else ""
        return _one_line(str(err)) + cause
    if isinstance(err, MissingMandatoryValue):
        return _one_line(str(err))
    return None


def _traceback_requested() -> bool:
    """Whether the user set HYDRA_FULL_ERROR=1 (then user errors show their traceback too)."""
    return os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def reports_user_errors(task_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Decorate the task function under ``@hydra.main``: its user errors reach `run_entry` as one line."""

    @functools.wraps(task_function)
    def wrapper(cfg: Any) -> Any:
        try:
            return task_function(cfg)
        except Exception as err:
            message = user_error_message(err)
            if message is None or _traceback_requested():
                raise
            raise UserErrorExit(message) from err

    return wrapper


def run_entry(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function with one-line user errors and clean interruptions (module docstring)."""
    if _USER_FULL_ERROR not in os.environ:
        os.environ[_USER_FULL_ERROR] = os.environ.get("HYDRA_FULL_ERROR", "")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises every exception; this wrapper reports it
    install_sigterm_handler()
    try:
        main()
    except UserErrorExit as err:
        print(f"error: {err.message}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else int(signal.SIGINT)
        print(f"\n{err}" if isinstance(err, Interrupted) else "\ninterrupted by SIGINT", file=sys.stderr)
        sys.exit(128 + signum)
    except Exception as err:
        message = user_error_message(err)
        if message is None or _traceback_requested():
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
