"""DCIS and LongRoPE on toy objectives with known optima (no model: milliseconds per search)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import pytest

from ropext.errors import RopextError
from ropext.search.base import Candidate, SearchResult, SearchSpace
from ropext.search.dcis import DCIS, DcisParams, level_count, segments
from ropext.search.longrope import LONGROPE, START_TOKEN_CHOICES, LongRopeParams

SCALE = 4.0
"""s = target / original; the factors' upper bound is 1.25·s = 5."""
UPPER = 1.25 * SCALE


class Recorder:
    """A toy objective that remembers every call (the candidates it received, in order)."""

    def __init__(self, score: Callable[[Candidate], float]) -> None:
        self.score = score
        self.calls: list[list[Candidate]] = []
        self.bounds: list[Candidate | None] = []

    def __call__(self, candidates: Sequence[Candidate], bound: Candidate | None = None) -> list[float]:
        self.calls.append(list(candidates))
        self.bounds.append(bound)
        return [self.score(c) for c in candidates]

    @property
    def candidates(self) -> list[Candidate]:
        return [c for call in self.calls for c in call]


def squared_distance(target: Sequence[float]) -> Callable[[Candidate], float]:
    return lambda c: sum((x - t) ** 2 for x, t in zip(c.factors, target, strict=True))


def split_target(pairs: int, high: float = 2.5, low: float = 4.0) -> list[float]:
    """High-frequency half at ``high``, low-frequency half at ``low``: reachable by DCIS's segment increments."""
    return [high] * (pairs // 2) + [low] * (pairs // 2)


def flat_space(pairs: int, start: float = 4.0) -> SearchSpace:
    return SearchSpace(pairs=pairs, scale=SCALE, initial=(tuple([start] * pairs),))


def run_dcis(
    pairs: int, target: Sequence[float], seed: int = 0, **params: object
) -> tuple[SearchResult, Recorder, SearchSpace, DcisParams]:
    space = flat_space(pairs)
    recorder = Recorder(squared_distance(target))
    chosen = DcisParams(**params)  # type: ignore[arg-type]
    return DCIS.run(recorder, space, chosen, seed), recorder, space, chosen


# --------------------------------------------------------------------------- segments


def test_segments_halve_the_vector_level_by_level() -> None:
    assert segments(8, 0) == [(0, 8)]
    assert segments(8, 1) == [(0, 4), (4, 8)]
    assert segments(8, 2) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert segments(8, 3) == [(i, i + 1) for i in range(8)]


@pytest.mark.parametrize(("pairs", "levels"), [(2, 1), (8, 3), (16, 4), (32, 5), (64, 6)])
def test_level_count_reaches_single_factors(pairs: int, levels: int) -> None:
    assert level_count(pairs) == levels
    assert all(stop - start == 1 for start, stop in segments(pairs, levels))
    assert any(stop - start > 1 for start, stop in segments(pairs, levels - 1))


@pytest.mark.parametrize("pairs", [2, 8, 16, 32, 64])
def test_segments_over_all_levels_number_d_minus_2(pairs: int) -> None:
    total = sum(len(segments(pairs, level)) for level in range(1, level_count(pairs) + 1))
    assert total == 2 * pairs - 2
    for level in range(1, level_count(pairs) + 1):  # every level covers the vector once, in order
        ranges = segments(pairs, level)
        assert ranges[0][0] == 0 and ranges[-1][1] == pairs
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


# --------------------------------------------------------------------------- DCIS


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dcis_finds_a_split_optimum(seed: int) -> None:
    pairs = 16
    target = split_target(pairs)
    result, recorder, space, _ = run_dcis(pairs, target, seed=seed, candidates=8)

    start_score = squared_distance(target)(Candidate(space.initial[0]))
    worst = max(abs(x - t) for x, t in zip(result.best.factors, target, strict=True))
    assert worst < 0.05, result.best.factors
    assert result.score < start_score / 50
    assert result.score == squared_distance(target)(result.best)
    # The reported best is the best the objective ever saw, and the history never gets worse.
    assert result.score == min(squared_distance(target)(c) for c in recorder.candidates)
    assert all(b <= a for a, b in itertools.pairwise(result.history))
    assert result.history[0] == start_score and result.history[-1] == result.score


@pytest.mark.parametrize("pairs", [8, 32])
def test_dcis_default_evaluations_and_batches(pairs: int) -> None:
    result, recorder, space, params = run_dcis(pairs, split_target(pairs))

    expected = 1 + 3 * (2 * pairs - 2)  # 187 for 32 pairs (rotary_dim 64)
    if pairs == 32:
        assert expected == 187
    assert DCIS.expected_evaluations(space, params) == expected
    assert result.evaluations == expected
    assert [len(call) for call in recorder.calls] == [1] + [3] * (2 * pairs - 2)
    assert DCIS.batch_hint(params) == 3
    assert len(result.history) == len(recorder.calls)


def test_dcis_levels_limit_the_search() -> None:
    pairs = 16
    result, recorder, space, params = run_dcis(pairs, split_target(pairs), levels=2, candidates=4)
    assert DCIS.expected_evaluations(space, params) == 1 + 4 * (2 + 4)
    assert result.evaluations == 1 + 4 * (2 + 4)
    assert len(recorder.calls) == 1 + 2 + 4


def test_dcis_first_call_is_the_start_then_the_last_segment_of_a_level() -> None:
    pairs = 8
    half = pairs // 2
    _, recorder, space, _ = run_dcis(pairs, split_target(pairs))
    start = space.initial[0]

    assert recorder.calls[0] == [Candidate(start)]
    # Second call: level 1's last segment (the low-frequency half), one increment added to all of it.
    for candidate in recorder.calls[1]:
        assert candidate.factors[:half] == start[:half]
        shifts = {round(x - s, 12) for x, s in zip(candidate.factors[half:], start[half:], strict=True)}
        assert len(shifts) == 1 and shifts != {0.0}
    # Third call: the first half, on top of whatever the second call kept: all share the last half.
    third = recorder.calls[2]
    assert len({c.factors[half:] for c in third}) == 1
    assert all(c.factors[:half] != start[:half] for c in third)
    # Level 2 starts with its last segment, (6, 8).
    fourth = recorder.calls[3]
    assert len({c.factors[:6] for c in fourth}) == 1
    assert len({c.factors[6:] for c in fourth}) == len(fourth)


@pytest.mark.parametrize("spacing", ["stratified", "grid"])
@pytest.mark.parametrize(("min_factor", "max_factor"), [(1.0, None), (2.0, 4.5)])
def test_dcis_keeps_factors_within_bounds(spacing: str, min_factor: float, max_factor: float | None) -> None:
    pairs = 8
    target = [0.0] * (pairs // 2) + [100.0] * (pairs // 2)  # far outside on both sides
    # Level 1 tries ±4 around 4.0, which overshoots both bounds.
    result, recorder, _, _ = run_dcis(
        pairs, target, min_factor=min_factor, max_factor=max_factor, spacing=spacing, first_range=4.0
    )
    high = max_factor if max_factor is not None else UPPER

    for candidate in recorder.candidates:
        assert all(min_factor <= x <= high for x in candidate.factors), candidate
    if spacing == "grid":  # its increments [-4, -4/3, 4/3] reach both bounds: the optimum sits on them
        assert result.best.factors == (min_factor,) * (pairs // 2) + (high,) * (pairs // 2)


def test_dcis_clips_the_starting_vector() -> None:
    recorder = Recorder(squared_distance([3.0] * 4))
    space = SearchSpace(pairs=4, scale=SCALE, initial=((0.5, 2.0, 7.0, 3.0),))
    DCIS.run(recorder, space, DcisParams(), seed=0)
    assert recorder.calls[0] == [Candidate((1.0, 2.0, UPPER, 3.0))]


def test_dcis_is_deterministic_for_a_seed() -> None:
    pairs = 16
    target = split_target(pairs)
    first, first_calls, _, _ = run_dcis(pairs, target, seed=7)
    again, again_calls, _, _ = run_dcis(pairs, target, seed=7)
    other, _, _, _ = run_dcis(pairs, target, seed=8)

    assert first.best == again.best and first.score == again.score and first.history == again.history
    assert first_calls.calls == again_calls.calls
    assert other.best.factors != first.best.factors


def test_dcis_grid_spacing_is_deterministic_and_symmetric() -> None:
    pairs = 8
    _, recorder, space, _ = run_dcis(pairs, split_target(pairs), spacing="grid", candidates=4, first_range=1.0)
    start = space.initial[0]
    shifts = sorted(round(c.factors[-1] - start[-1], 12) for c in recorder.calls[1])
    assert shifts == [-1.0, -0.5, 0.5, 1.0]


def test_dcis_rejects_bad_parameters() -> None:
    with pytest.raises(RopextError, match="candidates >= 1"):
        run_dcis(8, split_target(8), candidates=0)
    with pytest.raises(RopextError, match="spacing"):
        run_dcis(8, split_target(8), spacing="fibonacci")


# --------------------------------------------------------------------------- LongRoPE

LONGROPE_PAIRS = 16
MONOTONE_TARGET = (1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 4.75, 5.0, 5.0, 5.0, 5.0)
BEST_START_TOKENS = 8
OFF_GRID_SEED = (0.5, 1.234, 1.1, 2.0, 2.996, 2.5, 6.0, 3.0, *[4.0] * 8)
"""Below 1, off the grid, decreasing, above 1.25·s: becomes ON_GRID_SEED."""
ON_GRID_SEED = (1.0, 1.23, 1.23, 2.0, 3.0, 3.0, *[UPPER] * 10)


LongRopeRun = tuple[SearchResult, Recorder, LongRopeParams]


def monotone_objective(candidate: Candidate) -> float:
    return squared_distance(MONOTONE_TARGET)(candidate) + abs(candidate.start_tokens - BEST_START_TOKENS) * 0.01


def longrope_space() -> SearchSpace:
    pairs = LONGROPE_PAIRS
    seeds = (
        tuple([SCALE] * pairs),  # PI
        tuple([1.0] * pairs),  # the original
        tuple(1 + (UPPER - 1) * i / (pairs - 1) for i in range(pairs)),  # a ramp
        OFF_GRID_SEED,
    )
    return SearchSpace(pairs, SCALE, seeds, START_TOKEN_CHOICES)


def on_grid(x: float, step: float = 0.01) -> bool:
    return abs(x / step - round(x / step)) < 1e-6


def run_longrope(
    score: Callable[[Candidate], float] = monotone_objective, seed: int = 0, **params: object
) -> LongRopeRun:
    recorder = Recorder(score)
    chosen = LongRopeParams(**params)  # type: ignore[arg-type]
    return LONGROPE.run(recorder, longrope_space(), chosen, seed), recorder, chosen


@pytest.fixture(scope="module")
def longrope_default() -> LongRopeRun:
    return run_longrope()


def test_longrope_improves_strongly_over_the_seeds(longrope_default: LongRopeRun) -> None:
    result, recorder, _ = longrope_default
    best_seed = min(monotone_objective(Candidate(v)) for v in longrope_space().initial)

    assert result.score < best_seed / 10
    assert result.best.start_tokens == BEST_START_TOKENS
    assert result.score == monotone_objective(result.best)
    assert result.score == min(monotone_objective(c) for c in recorder.candidates)
    assert all(b <= a for a, b in itertools.pairwise(result.history))


def test_longrope_candidates_are_monotone_on_the_grid_and_new(
    longrope_default: LongRopeRun,
) -> None:
    _, recorder, _ = longrope_default
    candidates = recorder.candidates
    for candidate in candidates:
        factors = candidate.factors
        assert len(factors) == LONGROPE_PAIRS
        assert all(a <= b for a, b in itertools.pairwise(factors)), factors
        assert all(on_grid(x) and 1.0 <= x <= UPPER for x in factors), factors
        assert candidate.start_tokens in START_TOKEN_CHOICES
    keys = [c.key() for c in candidates]
    assert len(set(keys)) == len(keys), "a candidate was sent to the objective twice"
    # The seeds are rounded onto the grid and made monotone before their first evaluation.
    assert Candidate(tuple([SCALE] * LONGROPE_PAIRS)) in recorder.calls[0]
    assert Candidate(ON_GRID_SEED) in recorder.calls[0]


def test_longrope_batches(longrope_default: LongRopeRun) -> None:
    result, recorder, params = longrope_default
    sizes = [len(call) for call in recorder.calls]
    per_generation = params.mutations + params.crossovers

    assert sizes[0] == params.population == 64
    assert len(sizes) == 1 + params.iterations
    assert all(0 < size <= per_generation == 32 for size in sizes[1:])
    assert result.evaluations == sum(sizes)
    expected = LONGROPE.expected_evaluations(longrope_space(), params)
    assert expected == 64 + 40 * 32
    assert expected - 50 <= result.evaluations <= expected
    assert LONGROPE.batch_hint(params) == per_generation


def test_longrope_early_stop_on_a_flat_objective() -> None:
    result, recorder, params = run_longrope(lambda _: 1.0, early_stop=5)
    assert len(recorder.calls) == 1 + 5 < 1 + params.iterations
    assert result.score == 1.0


def test_longrope_without_start_token_search_keeps_zero() -> None:
    _, recorder, _ = run_longrope(iterations=10)
    assert len({c.start_tokens for c in recorder.candidates}) > 3
    plain, recorder, _ = run_longrope(iterations=10, search_start_tokens=False)
    assert {c.start_tokens for c in recorder.candidates} == {0}
    assert plain.best.start_tokens == 0


def test_longrope_is_deterministic_for_a_seed() -> None:
    first, first_calls, _ = run_longrope(seed=3, iterations=5)
    again, again_calls, _ = run_longrope(seed=3, iterations=5)
    _, other_calls, _ = run_longrope(seed=4, iterations=5)
    assert first_calls.calls == again_calls.calls
    assert first.best == again.best and first.score == again.score
    assert other_calls.calls != first_calls.calls


def test_longrope_rejects_too_few_parents() -> None:
    with pytest.raises(RopextError, match="parents"):
        run_longrope(parents=1)
    with pytest.raises(RopextError, match="parents"):
        run_longrope(population=4, parents=8)


# --------------------------------------------------------------------------- floors (critical pairs)

FLOORS = tuple([1.0] * 8 + [SCALE + 0.005] * 8)
"""s (off the 0.01 grid, to check rounding up) for the upper half; the objective pulls everything to 1."""


def floored_space(initial: tuple[tuple[float, ...], ...]) -> SearchSpace:
    return SearchSpace(LONGROPE_PAIRS, SCALE, initial, START_TOKEN_CHOICES, FLOORS)


def respects_floors(candidate: Candidate) -> bool:
    return all(x >= floor for x, floor in zip(candidate.factors, FLOORS, strict=True))


def test_longrope_never_proposes_below_the_floors() -> None:
    recorder = Recorder(squared_distance([1.0] * LONGROPE_PAIRS))
    space = floored_space(longrope_space().initial)  # seeds below the floors are raised to them
    result = LONGROPE.run(recorder, space, LongRopeParams(population=16, parents=8, iterations=10), seed=0)
    assert all(respects_floors(c) for c in recorder.candidates)
    # Pulled towards 1, the floored half ends at the first grid point above its floor; the rest falls below s.
    assert result.best.factors[8:] == tuple([SCALE + 0.01] * 8)
    assert max(result.best.factors[:8]) < SCALE


def test_dcis_never_proposes_below_the_floors() -> None:
    recorder = Recorder(squared_distance([1.0] * LONGROPE_PAIRS))
    result = DCIS.run(recorder, floored_space((tuple([2.0] * LONGROPE_PAIRS),)), DcisParams(), seed=0)
    assert all(respects_floors(c) for c in recorder.candidates)
    assert result.best.factors[8:] == FLOORS[8:]
    assert max(result.best.factors[:8]) < 2.0


def test_dcis_rejects_a_ceiling_below_the_floors() -> None:
    space = floored_space((tuple([2.0] * LONGROPE_PAIRS),))
    with pytest.raises(RopextError, match="critical floor"):
        DCIS.run(Recorder(lambda c: 0.0), space, DcisParams(max_factor=3.0), 0)


# --------------------------------------------------------------------------- Candidate.key


def test_candidate_key_follows_the_content() -> None:
    factors = (1.0, 1.5, 2.25, 4.0)
    key = Candidate(factors, 8).key()
    assert Candidate(tuple(factors), 8).key() == key
    assert Candidate(tuple(float(x) for x in [1, 1.5, 2.25, 4]), 8).key() == key

    nudged = (*factors[:2], math.nextafter(factors[2], math.inf), factors[3])
    assert Candidate(nudged, 8).key() != key
    assert Candidate(factors, 0).key() != key
    assert Candidate(factors, 9).key() != key
    assert Candidate(factors[:3], 8).key() != key
    assert Candidate(factors).key() == Candidate(factors, 0).key()


# --------------------------------------------------------------------------- facts each searcher owns
def test_every_builtin_searcher_gives_its_facts() -> None:
    from ropext.search import SEARCHERS
    from ropext.search.base import FACTS

    for entry in SEARCHERS:
        searcher = SEARCHERS.get(entry.name)
        assert all(hasattr(searcher, fact) for fact in FACTS), entry.name


def test_searchers_own_their_attention_start_tokens_and_seeds() -> None:
    assert (DCIS.default_attention, LONGROPE.default_attention) == ("yarn", "longrope")
    assert DCIS.start_token_choices == (0,)
    assert LONGROPE.start_token_choices == START_TOKEN_CHOICES
    assert LONGROPE.seed_methods(LongRopeParams()) == ("pi", "ntk", "yarn")
    # DCIS refines its init vector: it goes first, the others follow without repeating it.
    assert DCIS.seed_methods(DcisParams()) == ("yarn", "pi", "ntk")
    assert DCIS.seed_methods(DcisParams(init="ntk")) == ("ntk", "pi", "yarn")
    assert DCIS.seed_methods(DcisParams(init="llama3")) == ("llama3", "pi", "ntk", "yarn")
    assert DCIS.seed_methods(DcisParams(init="")) == ("pi", "ntk", "yarn")


# ------------------------------------------------------------------ DCIS with the attention factor searched


def test_dcis_varies_the_attention_factor_only_when_the_space_says_so() -> None:
    pairs, target, best_attention = 8, split_target(8), 1.3

    def score(c: Candidate) -> float:
        attention = 1.2 if c.attention is None else c.attention
        return squared_distance(target)(c) + 10 * (attention - best_attention) ** 2

    space = SearchSpace(pairs=pairs, scale=SCALE, initial=(tuple([4.0] * pairs),), attention=1.2)
    params = DcisParams(candidates=4)
    recorder = Recorder(score)
    result = DCIS.run(recorder, space, params, seed=0)
    assert all(c.attention is not None for c in recorder.candidates)
    assert abs(result.best.attention - best_attention) < abs(1.2 - best_attention)
    assert result.evaluations == len(recorder.candidates) == DCIS.expected_evaluations(space, params)
    # first and last calls vary only the attention factor; the factor steps keep the incumbent's
    first, last = recorder.calls[1], recorder.calls[-1]
    assert all(c.factors == recorder.calls[0][0].factors and c.attention != 1.2 for c in first)
    assert len({c.factors for c in last}) == 1
    # a fixed attention factor: candidates carry none, and the search is today's, call for call
    fixed = Recorder(score)
    plain = DCIS.run(fixed, flat_space(pairs), params, seed=0)
    assert all(c.attention is None for c in fixed.candidates)
    reference, _, _, _ = run_dcis(pairs, target, candidates=4)
    assert plain.best.factors == reference.best.factors


def test_candidate_keys_are_unchanged_without_an_attention_factor() -> None:
    plain = Candidate((1.0, 2.0), 3)
    assert plain.key() == Candidate((1.0, 2.0), 3, None).key()
    assert plain.key() != Candidate((1.0, 2.0), 3, 1.2).key() != Candidate((1.0, 2.0), 3, 1.3).key()


def test_the_committed_journals_params_are_the_searchers_params() -> None:
    """A new searcher parameter changes every journal's identity, so no committed search would resume (nor a
    rerun reproduce its factors): the parameters of every committed journal are exactly today's."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from ropext.search import SEARCHERS

    journals = sorted((Path(__file__).parents[2] / "bench" / "results").glob("*/*.journal.jsonl"))
    assert journals
    for path in journals:
        search = json.loads(path.read_text().splitlines()[0])["search"]
        searcher = SEARCHERS.get(search["searcher"])
        assert set(search["params"]) == set(asdict(searcher.params())), path
