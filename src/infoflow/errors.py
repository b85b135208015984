"""User errors: one base class, so the entry points can print them as one line without a traceback.

Raise a `UserError` (or a subclass) for anything the user can fix: a bad setting, a missing or corrupt
file, bad input tensors. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what is valid."""


class ConfigError(UserError, ValueError):
    """A bad setting (a config value or an API argument); the message lists the valid choices."""


class InputError(UserError, ValueError):
    """Bad input tensors: wrong shape, dtype, non-finite values, float targets, ..."""


class DataError(UserError, OSError):
    """A missing, unreadable or corrupt file: a dataset image, a checkpoint, a cache file."""


class MissingDataError(DataError, FileNotFoundError):
    """A file or folder that should exist does not; the message names it and the layout expected there."""


class NotFittedError(UserError, RuntimeError):
    """A method was asked for maps before what it estimates from data was fitted: call its ``fit`` first."""
