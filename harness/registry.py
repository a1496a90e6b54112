"""One generic, named registry for methods, datasets, models and trackers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from harness.errors import allowed, did_you_mean

T = TypeVar("T")


class UnknownName(KeyError):
    """Raised when a name is not registered; its message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """A name → object table filled by `register` calls at the end of each module.

    Args:
        kind: what is registered, used in messages ("method", "dataset", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Add `obj` under `name`; registering a name twice is an error."""
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} `{name}` is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """Return the object for `name` or raise UnknownName with suggestions."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownName(
                f"unknown {self.kind} `{name}`.{did_you_mean(name, self._items)} {allowed(self._items)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:  # an unhashable value (a list read from YAML) names nothing
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
