"""How a long evaluation reports progress and hands over each finished result as soon as it exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ropext.progress import ProgressDisplay


class Tracker(Protocol):
    def begin(self, description: str, total: int) -> None: ...

    def advance(self, detail: str = "") -> None: ...

    def finished(self, key: str, result: dict[str, Any]) -> None:
        """Called once per finished unit (a length); the caller persists it before going on."""


class QuietTracker:
    """Collects results, shows nothing (tests and library use)."""

    def __init__(self, on_result: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.on_result = on_result

    def begin(self, description: str, total: int) -> None:
        pass

    def advance(self, detail: str = "") -> None:
        pass

    def finished(self, key: str, result: dict[str, Any]) -> None:
        self.results[key] = result
        if self.on_result is not None:
            self.on_result(key, result)


class DisplayTracker(QuietTracker):
    """Shows the evaluation on a ``ropext.progress.ProgressDisplay``: a bar on a terminal, plain lines in a log."""

    def __init__(
        self, display: ProgressDisplay, on_result: Callable[[str, dict[str, Any]], None] | None = None
    ) -> None:
        super().__init__(on_result)
        self.display = display

    def begin(self, description: str, total: int) -> None:
        self.display.restart(description, total)

    def advance(self, detail: str = "") -> None:
        self.display.advance(description=detail or None)
