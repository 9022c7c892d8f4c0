"""bench/racing_replay.py on the committed per-window scores of a real DCIS 8k -> 64k search (SmolLM2, H200).

The replay is the evidence for racing's default margin (docs/search.md, "Racing"), so it must retrace the
journal exactly without racing, and its verdicts must follow from the real engine's racing code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
JOURNAL = ROOT / "bench" / "results" / "retrieval-v2-h200" / "dcis-64k-kept.yaml.journal.jsonl"


@pytest.fixture(scope="module")
def replay_module(load_bench):
    return load_bench("racing_replay")


@pytest.fixture(scope="module")
def journal(replay_module):
    header, entries = replay_module.read_journal(JOURNAL)
    return header, entries, {e["key"]: e["window_nll"] for e in entries}


def test_without_racing_the_replay_retraces_the_journal(replay_module, journal) -> None:
    header, entries, table = journal
    full = replay_module.replay(header, table, None)
    assert full.left_at is None and full.evaluations == len(entries)
    assert full.windows == len(entries) * header["samples"]
    assert full.score == min(e["score"] for e in entries)
    searched = json.loads(JOURNAL.read_text().splitlines()[1 + [e["score"] for e in entries].index(full.score)])
    assert list(full.factors) == searched["factors"]


def test_the_default_margin_keeps_the_search_and_scores_fewer_windows(replay_module, journal) -> None:
    from ropext.search.racing import DEFAULT_MARGIN

    header, _, table = journal
    full = replay_module.replay(header, table, None)
    raced = replay_module.replay(header, table, DEFAULT_MARGIN)
    assert raced.left_at is None and raced.factors == full.factors and raced.score == full.score
    assert raced.raced > 0 and raced.windows < full.windows


def test_a_margin_of_zero_leaves_the_path_and_is_reported(replay_module, journal) -> None:
    header, _, table = journal
    raced = replay_module.replay(header, table, 0.0)
    assert raced.left_at is not None and raced.factors is None
