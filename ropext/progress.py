"""Progress of a long run (search, eval, finetune): a rich bar on a terminal, plain lines anywhere else.

A bar drawn into a file or a pipe shows nothing until the end (rich draws a transient bar only on a terminal),
so where stderr is not a terminal (CI logs, batch jobs, ``2> log``) a plain line such as

    ppl tiny @ 8k: 12/40 (30%), 0:01:05 elapsed, 5.4 s/window, ETA 0:02:31; best ppl 12.3

is printed when the run starts, whenever another ``percent_step`` percent is done or ``interval_s`` seconds
have passed since the last line (whichever comes first), at the end, and when it stops early. Lines are
plain text (no colour or cursor codes) and flushed at once.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

PLAIN_INTERVAL_S = 30.0
"""At most this long between two plain lines while work is being done."""
PLAIN_PERCENT_STEP = 10.0
"""A plain line whenever another this many percent of the total is done."""


class ProgressDisplay:
    """One long run's progress: ``with ProgressDisplay("search", total=80) as shown: shown.update(completed=3)``.

    ``completed`` may start above 0 (a resumed run); the rate and the ETA count only the work done in this run.
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        completed: int = 0,
        *,
        unit: str = "item",
        detail: str = "",
        console: Any = None,
        interactive: bool | None = None,
        stream: TextIO | None = None,
        interval_s: float = PLAIN_INTERVAL_S,
        percent_step: float = PLAIN_PERCENT_STEP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.console = console
        self.interactive = console.is_terminal if interactive is None else interactive
        self.stream = stream
        self.unit = unit
        self.interval_s = interval_s
        self.percent_step = percent_step
        self.clock = clock
        self.description, self.total, self.completed, self.detail = description, total, completed, detail
        self._bar: Any = None
        self._task: Any = None
        self._restart_clock()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> ProgressDisplay:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
            )
            self._bar = Progress(*columns, console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(
                self.description, total=self.total, completed=self.completed, detail=self.detail
            )
        elif self.total is not None:  # an unknown total comes with the first update
            self._print_line()
        return self

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._printed != (self.completed, self.total) and (self.total is not None or self.completed):
            self._print_line()  # where it ended, if the last line did not already say so

    def __enter__(self) -> ProgressDisplay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ updates
    def restart(self, description: str, total: int | None, completed: int = 0) -> None:
        """A new stage (the next task of a run) with its own total, rate and ETA."""
        self.description, self.total, self.completed = description, total, completed
        self._restart_clock()
        if self._bar is not None:
            self._bar.update(self._task, description=description, total=total, completed=completed)
        else:
            self._print_line()

    def update(
        self,
        completed: int | None = None,
        *,
        total: int | None = None,
        description: str | None = None,
        detail: str | None = None,
    ) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        if detail is not None:
            self.detail = detail
        if self._bar is not None:
            self._bar.update(
                self._task, completed=self.completed, total=self.total, description=self.description, detail=self.detail
            )
        elif self._line_due():
            self._print_line()

    def advance(self, count: int = 1, *, description: str | None = None, detail: str | None = None) -> None:
        self.update(self.completed + count, description=description, detail=detail)

    # ------------------------------------------------------------------ plain lines
    def _restart_clock(self) -> None:
        self._began = self.clock()
        self._first = self.completed
        self._last_line = self._began
        self._printed: tuple[int, int | None] | None = None
        self._next_percent = self._percent_threshold(self.completed)

    def _percent_threshold(self, completed: int) -> float:
        """The next multiple of ``percent_step`` above ``completed``'s percentage."""
        if not self.total:
            return math.inf
        done = 100.0 * completed / self.total
        return (math.floor(done / self.percent_step) + 1) * self.percent_step

    def _line_due(self) -> bool:
        if self._printed is None:
            return True  # the first line once the total is known
        if self.clock() - self._last_line >= self.interval_s:
            return True
        if not self.total:
            return False
        return self.completed >= self.total or 100.0 * self.completed / self.total >= self._next_percent

    def _print_line(self) -> None:
        print(self.line(), file=self.stream or sys.stderr, flush=True)
        self._last_line = self.clock()
        self._printed = (self.completed, self.total)
        self._next_percent = self._percent_threshold(self.completed)

    def line(self) -> str:
        """``description: done/total (p%), elapsed, rate, ETA; detail``: the plain line for the state now."""
        elapsed = self.clock() - self._began
        done_here = self.completed - self._first
        parts = [f"{self.completed}/{self.total}" if self.total else f"{self.completed} {self.unit}s"]
        if self.total:
            parts[0] += f" ({100.0 * self.completed / self.total:.0f}%)"
        parts.append(f"{_clock(elapsed)} elapsed")
        if done_here > 0 and elapsed > 0:
            parts.append(_rate(done_here / elapsed, self.unit))
            if self.total and self.completed < self.total:
                parts.append(f"ETA {_clock((self.total - self.completed) * elapsed / done_here)}")
        text = f"{self.description}: " + ", ".join(parts)
        return f"{text}; {self.detail}" if self.detail else text


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _rate(per_second: float, unit: str) -> str:
    """``3.20 windows/s`` when fast, ``5.4 s/window`` when slow."""
    if per_second >= 1:
        return f"{per_second:.2f} {unit}s/s"
    return f"{1 / per_second:.1f} s/{unit}"
