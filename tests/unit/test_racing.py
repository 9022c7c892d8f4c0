"""Racing (``ropext.search.racing``) on a toy engine whose per-window NLL is a table: no model, milliseconds."""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ropext.distributed import World
from ropext.scaling import RopeScaling
from ropext.search.base import Candidate, SearchSpace
from ropext.search.dcis import DCIS, DcisParams
from ropext.search.engine import PerplexityEngine, frequencies_key
from ropext.search.journal import Journal
from ropext.search.longrope import LONGROPE, LongRopeParams
from ropext.search.racing import Racing, Scoring, stages
from ropext.search.run import BudgetedObjective, JournalRecorder, replay_journal

PAIRS = 8
SCALE = 4.0
WINDOWS = 5
LENGTH = 3
"""Two predicted tokens per window: a window's NLL sum is twice its per-token value."""
MARGIN = 0.01


def scaling_of(candidate: Candidate) -> RopeScaling:
    return RopeScaling(
        method="toy",
        rope_theta=10000.0,
        rotary_dim=2 * PAIRS,
        original_max_position_embeddings=256,
        max_position_embeddings=1024,
        factors=candidate.factors,
        start_tokens=candidate.start_tokens,
    )


def wobble(key: str, window: int, amplitude: float) -> float:
    """Deterministic noise in [-amplitude, amplitude] for a candidate and a window."""
    digest = hashlib.sha256(f"{key}/{window}".encode()).digest()
    return amplitude * (2 * struct.unpack("<Q", digest[:8])[0] / 2**64 - 1)


class ToyEngine(PerplexityEngine):
    """The real engine (cache, stages, racing, journal hooks) with a table in place of the model.

    Window w of a candidate costs ``quality(factors) + offset[w] + noise``: the offsets make some windows
    much harder than others (as real documents are), the noise is what pairing cannot cancel.
    """

    def __init__(self, quality: Callable[[tuple[float, ...]], float], racing: Racing | None, noise: float) -> None:
        super().__init__([], torch.zeros(WINDOWS, LENGTH, dtype=torch.int64), scaling_of(Candidate((1.0,) * PAIRS)),
                         racing=racing)  # fmt: skip
        self.quality, self.noise = quality, noise
        self.offsets = [3.0 * w for w in range(WINDOWS)]
        self.rows_scored = 0

    def value(self, scaling: RopeScaling, window: int) -> float:
        per_token = self.quality(scaling.factors) + self.offsets[window]
        return (LENGTH - 1) * (per_token + wobble(frequencies_key(scaling), window, self.noise))

    def _evaluate_rows(self, items, rows, nll, whole, on_candidate) -> None:  # type: ignore[no-untyped-def]
        pending = {c: sum(1 for r in rows if r[0] == c) for c, _ in rows}
        for c, w in rows:
            nll[c][w] = self.value(items[c][1], w)
            self.rows_scored += 1
            pending[c] -= 1
            if pending[c] == 0 and on_candidate is not None:
                on_candidate(c)


def distance_to(target: list[float]) -> Callable[[tuple[float, ...]], float]:
    return lambda factors: sum((x - t) ** 2 for x, t in zip(factors, target, strict=True)) / len(target)


TARGET = [2.5] * (PAIRS // 2) + [4.0] * (PAIRS // 2)


def space() -> SearchSpace:
    return SearchSpace(pairs=PAIRS, scale=SCALE, initial=(tuple([4.0] * PAIRS),))


# --------------------------------------------------------------------------- schedule and scoring


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, [(0, 1)]), (2, [(0, 1), (1, 2)]), (5, [(0, 1), (1, 3), (3, 5)]), (8, [(0, 1), (1, 4), (4, 8)])],
)
def test_stages_are_window_one_then_up_to_half_then_the_rest(count: int, expected: list[tuple[int, int]]) -> None:
    assert [(s.start, s.stop) for s in stages(count)] == expected


def test_log_score_over_all_windows_is_the_engine_arithmetic_before_racing() -> None:
    nll = [10.5, 3.25, 7.125]
    assert Scoring(9).log_score(nll) == sum(nll) / (9 * 3)
    assert Scoring(9, (2, 3, 4)).log_score(nll) == sum(nll) / 9
    whole = [40.0, 30.0, 20.0]
    mixed = Scoring(9, (2, 3, 4), 0.5).log_score(nll, whole)
    assert mixed == (1 - 0.5) * (sum(whole) / 27) + 0.5 * sum(nll) / 9
    # A prefix counts only its own windows' tokens.
    assert Scoring(9, (2, 3, 4)).log_score(nll[:2]) == (10.5 + 3.25) / 5


def test_drops_only_beyond_the_margin() -> None:
    racing = Racing(0.01)
    assert racing.drops(1.0 + 0.0101, 1.0) and not racing.drops(1.0 + 0.0099, 1.0)
    assert not Racing(0.0).drops(1.0, 1.0) and Racing(0.0).drops(1.0 + 1e-12, 1.0)


# --------------------------------------------------------------------------- the property


def test_racing_never_drops_the_candidate_a_full_evaluation_ranks_best() -> None:
    """Noise up to a quarter of the margin per window: pairing cancels the windows' own difficulty, and a
    candidate dropped is worse than the reference, so never the best; across many random calls."""
    rng = random.Random(0)
    raced_out = 0
    for trial in range(200):
        target = [rng.uniform(1.0, 5.0) for _ in range(PAIRS)]
        racing_engine = ToyEngine(distance_to(target), Racing(MARGIN), noise=MARGIN / 4)
        full_engine = ToyEngine(distance_to(target), None, noise=MARGIN / 4)
        reference = scaling_of(Candidate(tuple(t + rng.gauss(0, 0.1) for t in target)))
        calls = [scaling_of(Candidate(tuple(t + rng.gauss(0, 0.12) for t in target))) for _ in range(6)]
        for engine in (racing_engine, full_engine):
            engine([reference])
        raced = racing_engine(calls, bound=frequencies_key(reference))
        full = full_engine(calls)
        everything = [full_engine.cache[frequencies_key(reference)], *full]
        best = min(range(len(everything)), key=lambda i: everything[i])
        if best > 0:  # the best is a candidate of the call: racing scores it in full, bit for bit
            assert raced[best - 1] == full[best - 1], f"trial {trial}: the best candidate was raced out"
        for mine, theirs in zip(raced, full, strict=True):
            assert mine == theirs or (mine == math.inf and theirs > everything[0]), (trial, mine, theirs)
        raced_out += sum(score == math.inf for score in raced)
    assert raced_out > 100, f"the trials should race many candidates out, raced {raced_out}"


def test_without_a_reference_the_call_is_not_raced() -> None:
    engine = ToyEngine(distance_to(TARGET), Racing(MARGIN), noise=0.0)
    bad = scaling_of(Candidate((9.0,) * PAIRS))
    assert engine([bad], bound=None)[0] < math.inf
    # A bound with no per-window values (a journal from before racing) races nothing either.
    unknown = scaling_of(Candidate((3.0,) * PAIRS))
    engine.cache[frequencies_key(unknown)] = 1.0
    worse = scaling_of(Candidate((8.0,) * PAIRS))
    assert engine([worse], bound=frequencies_key(unknown))[0] < math.inf
    assert engine.raced == {}


# --------------------------------------------------------------------------- whole searches


def run(searcher: str, racing: Racing | None, journal: Journal | None = None, engine: ToyEngine | None = None):
    engine = engine or ToyEngine(distance_to(TARGET), racing, noise=MARGIN / 4)
    if journal is not None:
        replay_journal(engine, journal, World())
        engine.on_result = JournalRecorder(journal, False, 0.0, 0.0, 0, engine, None)
    objective = BudgetedObjective(engine, scaling_of, None)
    if searcher == "dcis":
        result = DCIS.run(objective, space(), DcisParams(candidates=4, levels=3), seed=0)
    else:
        params = LongRopeParams(population=12, parents=4, iterations=5, mutations=4, crossovers=4)
        result = LONGROPE.run(objective, space(), params, seed=0)
    return result, engine


@pytest.mark.parametrize("searcher", ["dcis", "longrope"])
def test_a_raced_search_ends_where_the_full_search_ends_with_fewer_windows(searcher: str) -> None:
    raced, raced_engine = run(searcher, Racing(MARGIN))
    full, full_engine = run(searcher, None)
    assert raced.best == full.best and raced.score == full.score
    assert raced.evaluations == full.evaluations and len(raced_engine.cache) == len(full_engine.cache)
    assert len(raced_engine.raced) > 0
    assert raced_engine.rows_scored < full_engine.rows_scored
    saved = sum(WINDOWS - seen for seen in raced_engine.raced.values())
    assert raced_engine.rows_scored == full_engine.rows_scored - saved
    # Every raced-out candidate saw a prefix of the schedule: 1 or 3 of the 5 windows.
    assert set(raced_engine.raced.values()) <= {1, 3}


def test_a_raced_search_resumes_bit_identically_from_a_cut_journal(tmp_path: Path) -> None:
    path = tmp_path / "toy.journal.jsonl"
    identity = {"toy": 1}
    journal = Journal(path, identity)
    straight, engine = run("dcis", Racing(MARGIN), journal)
    journal.close()
    lines = path.read_text().split("\n")
    records = lines[1:-1]
    raced_lines = [line for line in records if '"score": null' in line]
    assert raced_lines and all('"raced_after_windows"' in line for line in raced_lines)
    # Killed mid-way: the first 40% of the records and half a line survive.
    kept = len(records) * 2 // 5
    path.write_text("\n".join(lines[: 1 + kept]) + "\n" + records[kept][: len(records[kept]) // 2])
    journal = Journal(path, identity)
    resumed, resumed_engine = run("dcis", Racing(MARGIN), journal)
    journal.close()
    assert resumed.best == straight.best and resumed.score == straight.score
    assert resumed_engine.cache == engine.cache and resumed_engine.raced == engine.raced
    assert resumed_engine.window_values == engine.window_values
    assert resumed_engine.evaluations == len(engine.cache) - kept

    def keys_and_scores(text: str) -> list[tuple[str, float | None]]:
        return [(json.loads(line)["key"], json.loads(line)["score"]) for line in text.split("\n")[1:-1]]

    # The resumed journal holds what the straight one holds, in the same order (null for the raced)…
    assert keys_and_scores(path.read_text()) == keys_and_scores("\n".join(lines))
    again = Journal(path, identity)
    assert again.scores() == engine.cache  # …and replays to every score, inf for the raced
    again.close()
