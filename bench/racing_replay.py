"""Racing replayed on a real search's per-window scores: what each margin saves and whether it changes the result.

A search journal written by ropext 0.1 with racing off holds every candidate's per-window NLL sums
(``window_nll``), measured on the GPU. This replays the same searcher, with the same request, over a table
of those numbers instead of a model: the full replay (no racing) must retrace the journal exactly, and
each racing margin then shows how many windows it scores and whether the search still ends on the same
factors. Windows, not seconds, are what racing saves: every window costs the engine the same.

    python bench/racing_replay.py bench/results/retrieval-v2-h200/dcis-64k-kept.yaml.journal.jsonl \
        --margins 0,0.0005,0.001,0.002,0.005,0.01,0.02 --out bench/results/racing-replay-kept.md

No model, no GPU, no corpus file: the request is rebuilt from the journal's header (a corpus path that
does not exist here is never opened).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ropext.methods import METHODS
from ropext.model.layout import RotaryLayout
from ropext.search.engine import PerplexityEngine
from ropext.search.racing import Racing
from ropext.search.run import BudgetedObjective, SearchRequest, run_searcher, search_space, to_scaling, validate


class OffTheJournal(Exception):
    """Racing made the search ask for a candidate the journal's search never scored: its path changed."""


class TableEngine(PerplexityEngine):
    """The real engine (cache, racing stages, bounds) with the journal's per-window NLL sums as its model."""

    def __init__(self, table: dict[str, list[float]], windows: int, length: int, unscaled, racing: Racing | None):
        super().__init__([], torch.zeros(windows, length, dtype=torch.int64), unscaled, racing=racing)
        self.table = table
        self.windows_scored = 0

    def _evaluate_rows(self, items, rows, nll, whole, on_candidate) -> None:  # type: ignore[no-untyped-def]
        pending: dict[int, int] = {}
        for c, _ in rows:
            pending[c] = pending.get(c, 0) + 1
        for c, w in rows:
            key = items[c][0]
            if key not in self.table:
                raise OffTheJournal(key)
            nll[c][w] = self.table[key][w]
            self.windows_scored += 1
            pending[c] -= 1
            if pending[c] == 0 and on_candidate is not None:
                on_candidate(c)


@dataclass
class Replay:
    margin: float | None
    evaluations: int
    windows: int
    raced: int
    factors: tuple[float, ...] | None
    score: float | None
    left_at: int | None = None
    """Evaluations done before the search asked for a candidate outside the journal."""


def read_journal(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header, entries = lines[0]["search"], lines[1:]
    missing = [e["key"] for e in entries if "window_nll" not in e or "raced_after_windows" in e]
    if missing or "racing" in header:
        sys.exit(f"error: {path} is not a full search with per-window scores (racing off, ropext 0.1 or later)")
    return header, entries


def request_of(header: dict[str, Any]) -> tuple[SearchRequest, RotaryLayout]:
    """The search request and layout the journal was written by, from its identity."""
    if header.get("from") is not None or header.get("short") or header.get("attention_searched"):
        sys.exit("error: replaying --from, --short-length and --attention-factor search journals is not supported")
    layout = RotaryLayout(**(header["layout"] | {"name": header["model"]}))
    params = tuple(f"{k}={v}" for k, v in header["params"].items() if v is not None)
    request = SearchRequest(
        model=header["model"],
        searcher=header["searcher"],
        params=params,
        corpus=header["corpus"],
        target_length=header["target_length"],
        samples=header["samples"],
        skip_docs=header["skip_docs"],
        seed=header["seed"],
        attention=repr(float(header["attention_factor"])),
        critical_floor=bool(header.get("critical_floor")),
        objective=header.get("objective", "ppl"),
    )
    return request, layout


def replay(header: dict[str, Any], table: dict[str, list[float]], margin: float | None) -> Replay:
    request, layout = request_of(header)
    plan = validate(request, layout)
    if asdict(plan.params) != header["params"] or plan.attention != header["attention_factor"]:
        sys.exit("error: the rebuilt request does not match the journal's identity")
    space = search_space(layout, request, plan)
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    racing = Racing(margin) if margin is not None else None
    engine = TableEngine(table, header["samples"], header["window_length"], unscaled, racing)
    objective = BudgetedObjective(engine, lambda c: to_scaling(request, layout, plan, c), None)
    try:
        winner, score = run_searcher(plan, space, objective, request.seed)
    except OffTheJournal:
        return Replay(margin, engine.evaluations, engine.windows_scored, len(engine.raced), None, None,
                      left_at=engine.evaluations)  # fmt: skip
    return Replay(margin, engine.evaluations, engine.windows_scored, len(engine.raced), winner.factors, score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("journal", type=Path)
    parser.add_argument("--margins", default="0.001,0.002,0.005,0.01,0.02", help="nats per scored token")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args()
    header, entries = read_journal(args.journal)
    table = {e["key"]: e["window_nll"] for e in entries}
    full = replay(header, table, None)
    journal_best = min(e["score"] for e in entries)
    retraced = full.left_at is None and full.evaluations == len(entries) and full.score == journal_best
    if not retraced:
        sys.exit(f"error: the replay without racing does not retrace {args.journal} ({full}); nothing to compare")
    rows = [full] + [replay(header, table, float(m)) for m in args.margins.split(",")]
    lines = _table(args.journal, args.margins, header, rows, full)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def _table(path: Path, margins: str, header: dict[str, Any], rows: list[Replay], full: Replay) -> list[str]:
    windows = header["samples"]
    same: Callable[[Replay], str] = lambda r: (  # noqa: E731
        f"left the journal's path after {r.left_at} evaluations" if r.left_at is not None
        else "yes" if r.factors == full.factors else f"no (score {r.score:.4f} against {full.score:.4f})"
    )  # fmt: skip
    lines = [
        f"`python bench/racing_replay.py {path} --margins {margins}`",
        "",
        f"{header['searcher']} {header['window_length']} tokens x {windows} windows; "
        f"{full.evaluations} candidates, {full.windows} windows without racing.",
        "",
        "| margin (nats/token) | candidates | windows scored | saved | raced out | same factors |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        name = "off" if r.margin is None else f"{r.margin:g}"
        saved = f"{100 * (1 - r.windows / full.windows):.1f}%" if r.left_at is None else "–"
        lines.append(f"| {name} | {r.evaluations} | {r.windows} | {saved} | {r.raced} | {same(r)} |")
    return lines


if __name__ == "__main__":
    main()
