"""What an evaluation task is to the commands: one object per task, registered in `ropext.evaluate.TASKS`.

A task owns everything a command needs to run it without knowing its name: the function that computes it,
how its options are read from command-line values, which columns its table shows, and the checks that
belong before or after the model loads. ``ropext eval run`` runs any of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _no_check(json_path: Path | None) -> None:
    return None


def _unchanged(options: Any, tokenizer: Any) -> Any:
    return options


@dataclass(frozen=True)
class Task:
    name: str
    run: Callable[..., dict[str, dict[str, Any]]]
    """``run(prepared, options, tracker, done=None)``: the results per length (as strings), skipping those in
    ``done``."""
    options: Callable[..., Any]
    """``options(lengths, **values)``: the task's options from command-line values named as the options of
    ``ropext eval run`` (``corpus``, ``max_docs``…); values of other tasks are ignored. Every check of them
    that needs no model runs here, so bad input fails before the model loads."""
    columns: tuple[str, ...] = ()
    """The result fields shown as table columns, one row per length."""
    unit: str = "prompt"
    """What the progress bar counts."""
    rows: Callable[[dict[str, Any]], tuple[dict[str, Any], tuple[str, ...]]] | None = None
    """For results that are not flat: the document with each length's result flattened, and its columns."""
    check_result_file: Callable[[Path | None], None] = _no_check
    """Refuses a result file this task must not resume into, before anything loads."""
    settle: Callable[[Any, Any], Any] = _unchanged
    """``settle(options, tokenizer)``: the options with what the tokenizer decides filled in, as stored."""

    def table(self, document: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The result document as table rows, and the columns to show."""
        return self.rows(document) if self.rows is not None else (document, self.columns)
