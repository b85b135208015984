"""Import every module that registers attribution methods, so `METHODS` is complete."""

import infoflow.iba.per_sample  # noqa: F401
