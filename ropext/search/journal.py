"""The search journal: an append-only JSON-lines record of every evaluation, flushed as it happens.

Line 1 names the search (model, corpus, windows, searcher, parameters, seed…); every further line is
one scored candidate: its factors, its score (null for one raced out) and its NLL per window.
Rerunning the same search replays the journal into the objective's cache; the searcher is
deterministic for its seed, so it retraces its steps without evaluating anything again and continues
where the interrupted run stopped. A journal of another search, or one damaged anywhere but its last
line (which a kill can cut short), is refused.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ropext.errors import RopextError

FORMAT = "ropext-search-journal"
VERSION = 1


class Journal:
    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path = path
        self.identity = json.loads(json.dumps(identity))  # as it will read back
        self.entries: dict[str, dict[str, Any]] = {}
        if path.exists() and path.stat().st_size > 0:
            self._replay()
            self._handle = path.open("a")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = path.open("w")
            self._write({"format": FORMAT, "version": VERSION, "search": self.identity})

    def _replay(self) -> None:
        text = self.path.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the part after the last newline is a line a kill cut short, if any
        if not complete:
            raise RopextError(f"journal {self.path} is damaged (no complete header line); move it away to start over")
        try:
            header = json.loads(complete[0])
        except json.JSONDecodeError:
            raise RopextError(f"journal {self.path} is not a ropext search journal; use another --journal") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise RopextError(f"journal {self.path} is not a ropext search journal; use another --journal")
        if header.get("version") != VERSION:
            raise RopextError(f"journal {self.path} has version {header.get('version')}; this ropext reads {VERSION}")
        if header.get("search") != self.identity and not any(line.strip() for line in complete[1:]):
            # A journal with no evaluation records nothing worth keeping: start it over.
            with self.path.open("w") as handle:
                handle.write(json.dumps({"format": FORMAT, "version": VERSION, "search": self.identity}) + "\n")
            return
        if header.get("search") != self.identity:
            differing = sorted(
                k
                for k in set(self.identity) | set(header.get("search", {}))
                if self.identity.get(k) != header.get("search", {}).get(k)
            )
            raise RopextError(
                f"journal {self.path} belongs to a different search ({', '.join(differing)} differ); "
                "rerun with the same arguments, or give a new --journal/--out"
            )
        for number, line in enumerate(complete[1:], start=2):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                # null: a candidate raced out before its score was known (``ropext.search.racing``).
                key, score = entry["key"], math.inf if entry["score"] is None else float(entry["score"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise RopextError(
                    f"journal {self.path} is damaged at line {number}; move it away to start the search over"
                ) from None
            self.entries[key] = {**entry, "score": score}
        if lines[-1]:
            # Drop the cut-short line so the next append starts on a fresh line.
            with self.path.open("w") as handle:
                handle.write("\n".join(complete) + "\n")

    def _write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def elapsed(self) -> float:
        """Seconds spent by the runs recorded so far (the largest "elapsed"; older journals kept "t")."""
        return max((float(e.get("elapsed", e.get("t", 0.0))) for e in self.entries.values()), default=0.0)

    def scores(self) -> dict[str, float]:
        return {key: entry["score"] for key, entry in self.entries.items()}

    def append(self, key: str, record: dict[str, Any], score: float) -> None:
        entry = {"key": key, **record, "score": score}
        self.entries[key] = entry
        # A raced-out candidate's inf is written as null: plain JSON, which every JSON reader takes.
        self._write({**entry, "score": score if math.isfinite(score) else None})

    def close(self) -> None:
        self._handle.close()


def saved_evaluations(path: Path) -> int:
    """How many evaluations a journal holds (complete lines after the header): what a rerun will not redo."""
    try:
        lines = path.read_text().split("\n")[1:-1]
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if line.strip())
