"""Reading the result files a report is made of, through ``ropext.results``: which are results, which are skipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ropext.errors import RopextError
from ropext.results import ResultDoc, check_result_shape, read_result

TASK_TITLES = {"ppl": "Perplexity", "passkey": "Passkey retrieval", "ruler": "RULER"}
"""The tasks a report shows, in the order of its sections."""


def load_result(path: Path) -> ResultDoc | None:
    """The result file at ``path``; None for a comparison summary (``ropext.results.read_result``), whose numbers
    are the per-method result files'. Anything else, a task the report does not show included, is an error."""
    doc = read_result(path)
    if doc is None:
        return None
    if doc.task not in TASK_TITLES:
        raise RopextError(f"{path}: unknown task {doc.task!r}; the report knows {', '.join(TASK_TITLES)}")
    check_result_shape(doc)
    return doc


def load_results(paths: Sequence[Path]) -> tuple[list[ResultDoc], list[Path]]:
    """The result files in the order given, and the comparison summaries skipped."""
    if not paths:
        raise RopextError("no result files given: pass the --json files of `ropext eval`, e.g. results/*.json")
    docs, skipped = [], []
    for path in dict.fromkeys(paths):  # a file named twice counts once
        doc = load_result(path)
        if doc is None:
            skipped.append(path)
        else:
            docs.append(doc)
    if not docs:
        raise RopextError("none of the files given is a ropext result file; pass the --json files of `ropext eval`")
    return docs, skipped
