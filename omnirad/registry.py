"""Named entries of one extension point (encoders, adapters, strategies, data sources, ...).

Each extension point keeps one ``Registry`` next to its implementations; configuration checks,
error messages and the generated key table read the names from it, so a new entry is one module
plus one registration. Like timm's model registry, entries register themselves when their module
is imported, and the package that owns the registry imports its modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from omnirad.errors import ConfigError, bad_value

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name for the configuration key ``key`` (e.g. ``model.encoder``)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.key}: '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def check(self, name: str, expected: str = "") -> None:
        """Raise ``ConfigError`` naming ``key`` unless ``name`` is registered."""
        if name not in self._entries:
            raise bad_value(self.key, name, expected or "one of " + ", ".join(self._entries))

    def __getitem__(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def get(self, name: str) -> T | None:
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())


__all__ = ["ConfigError", "Registry"]
