"""Attribution methods behind one interface, in one registry."""

from infoflow.attribution.base import METHODS, Attribution, as_target

__all__ = ["METHODS", "Attribution", "as_target"]
