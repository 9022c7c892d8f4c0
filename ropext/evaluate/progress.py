"""How a long evaluation reports progress and hands over each finished result as soon as it exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


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


class RichTracker(QuietTracker):
    """A rich progress bar with elapsed and remaining time."""

    def __init__(self, progress: Any, on_result: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        super().__init__(on_result)
        self.progress = progress
        self.task = None

    def begin(self, description: str, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(description, total=total)
        else:
            self.progress.update(self.task, description=description, total=total, completed=0)

    def advance(self, detail: str = "") -> None:
        self.progress.advance(self.task)
        if detail:
            self.progress.update(self.task, description=detail)
