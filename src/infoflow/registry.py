"""Name -> factory registries with errors that list the valid names (timm-style).

The one plug-in mechanism for models, methods, tasks and analyses: a module registers what it defines with
the `Registry.register` decorator, and its package ``__init__`` imports the package's modules, so importing
the package fills the registry (e.g. ``import infoflow.attribution`` gives every method in `METHODS`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from infoflow.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(KeyError, ConfigError):
    """Raised for a name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of factories.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(): ...

    A factory registered with keyword ``presets`` is stored as ``functools.partial(factory, **presets)``:
    stacked decorators register one class under several names (e.g. LRP with two rules).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._namespaces: dict[str, Callable[[str], T]] = {}

    def register_namespace(self, prefix: str, factory: Callable[[str], T]) -> None:
        """Names ``<prefix>/<rest>`` get ``functools.partial(factory, rest)`` (e.g. ``timm/resnet50``)."""
        if prefix in self._namespaces:
            raise ValueError(f"{self.kind} namespace {prefix!r} is already registered")
        self._namespaces[prefix] = factory

    def register(self, name: str, **presets: Any) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = functools.partial(obj, **presets) if presets else obj  # type: ignore[assignment]
            return obj

        return decorator

    def get(self, name: str) -> T:
        prefix, sep, rest = str(name).partition("/")
        if sep and prefix in self._namespaces and name not in self._items:
            if not rest:
                raise UnknownNameError(f"{self.kind} {name!r}: give a name after {prefix}/ (e.g. {prefix}/resnet50)")
            return functools.partial(self._namespaces[prefix], rest)  # type: ignore[return-value]
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
                + "".join(f", or {p}/<name>" for p in self._namespaces)
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        prefix, sep, rest = str(name).partition("/")
        return name in self._items or bool(sep and rest and prefix in self._namespaces)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
