"""A name -> object registry with lazy ``"module:attr"`` targets and "did you mean" errors.

Three instances exist (methods, searchers, tasks). Third-party packages add entries through the
``ropext.plugins`` entry-point group: each entry point names a callable that receives nothing and
registers what it wants on the public registries.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ropext.errors import RopextError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: str | Any  # "package.module:attr" (imported on first use) or the object itself
    summary: str
    aliases: tuple[str, ...] = ()


class Registry(Generic[T]):
    """Named entries of one kind (``what`` names the kind in error messages)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry] = {}
        self._alias_of: dict[str, str] = {}
        self._loaded: dict[str, T] = {}

    def register(self, name: str, target: str | T, summary: str, aliases: tuple[str, ...] = ()) -> None:
        # Names are case-insensitive on the command line, so they are stored lower-case.
        name, aliases = name.strip().lower(), tuple(a.strip().lower() for a in aliases)
        for key in (name, *aliases):
            if key in self._entries or key in self._alias_of:
                raise ValueError(f"{self.what} {key!r} is registered twice")
        self._entries[name] = Entry(name, target, summary, tuple(aliases))
        for alias in aliases:
            self._alias_of[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; unknown names raise with suggestions."""
        key = name.strip().lower()
        if key in self._entries:
            return key
        if key in self._alias_of:
            return self._alias_of[key]
        known = sorted([*self._entries, *self._alias_of])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RopextError(f"unknown {self.what} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}")

    def get(self, name: str) -> T:
        key = self.canonical(name)
        if key not in self._loaded:
            target = self._entries[key].target
            if isinstance(target, str):
                module_name, _, attr = target.partition(":")
                target = getattr(importlib.import_module(module_name), attr)
            self._loaded[key] = target
        return self._loaded[key]

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        # Asked for every scaling a search builds (is its label a dynamic method?): no suggestions computed.
        key = name.strip().lower()
        return key in self._entries or key in self._alias_of

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names_in_order(self) -> tuple[str, ...]:
        """Names in registration order: the built-ins as their package registers them, then plugins."""
        return tuple(self._entries)


_plugins_loaded = False


def load_plugins() -> None:
    """Run every ``ropext.plugins`` entry point once, so third-party names join the registries."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group="ropext.plugins"):
        point.load()()
