"""DCIS: divide-and-conquer incremental search (Yang et al.).

Level 1 splits the factor vector into halves (high- and low-frequency pairs); each following level
halves every segment, until segments hold one factor. At every segment — the last (lowest
frequencies) first within a level — k increments v are drawn from the level's range [−r, r], v is
added to every factor of the segment, the k candidates are scored together, and the best replaces
the current vector if it beats it. Levels narrow their range (r_ℓ = r_1 · shrink^(ℓ−1)). Factors
need not be monotone.

Evaluations: k per segment, 2 + 4 + … + d/2 = d − 2 segments, so k·(d − 2), plus one for the
starting vector (the incumbent every step is compared with: "keep unchanged" is always a choice).
With ``--attention-factor search`` (ropext's addition) the attention factor is one more coordinate: k
values a·(1 + v) are tried before the first level and after the last (2k evaluations more).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ropext.errors import RopextError
from ropext.search.base import SEED_METHODS, Candidate, Objective, SearchResult, SearchSpace, best_of

ATTENTION_RANGE = 0.2
"""With ``--attention-factor search``: relative half-width of the attention-factor steps (a · (1 + v), v in
[−0.2, 0.2]), one step before the first level and one after the last. A constant, not a parameter: a new
parameter would change every existing journal's identity (its ``params``), so none of them would resume."""


@dataclass(frozen=True)
class DcisParams:
    candidates: int = 3
    """k: increments tried per segment."""
    first_range: float | None = None
    """Half-width r_1 of the level-1 increments; default max((s − 1) / 2, 0.25)."""
    shrink: float = 0.5
    """Each level's half-width is the previous one's times this."""
    levels: int | None = None
    """Stop after this many levels; default: until segments hold one factor."""
    min_factor: float = 1.0
    """Factors are clipped below at this value (1: never rotate faster than the original)."""
    max_factor: float | None = None
    """Factors are clipped above at this value; default 1.25·s (LongRoPE's bound)."""
    spacing: str = "stratified"
    """How increments are drawn: ``stratified`` (one uniform draw in each of k equal sub-ranges) or
    ``grid`` (the first k of the k + 1 evenly spaced values from −r to r, zero excluded; for odd k the
    grid cannot be symmetric without zero, so +r is the value left out)."""
    init: str = "yarn"
    """Closed-form method of the starting vector when no --from file is given."""


def segments(pairs: int, level: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of a level: level 1 halves the vector, each later level halves again."""
    ranges = [(0, pairs)]
    for _ in range(level):
        ranges = [part for start, stop in ranges for part in _halves(start, stop)]
    return ranges


def _halves(start: int, stop: int) -> list[tuple[int, int]]:
    if stop - start <= 1:
        return [(start, stop)]
    middle = start + (stop - start) // 2
    return [(start, middle), (middle, stop)]


def level_count(pairs: int) -> int:
    level = 0
    while any(stop - start > 1 for start, stop in segments(pairs, level)):
        level += 1
    return level


def increments(rng: random.Random, k: int, half_width: float, spacing: str) -> list[float]:
    if spacing == "stratified":
        width = 2 * half_width / k
        return [-half_width + width * (j + rng.random()) for j in range(k)]
    if spacing == "grid":
        steps = [-half_width + 2 * half_width * j / k for j in range(k + 1)]
        return [v for v in steps if v != 0.0][:k]
    raise RopextError(f"dcis spacing must be 'stratified' or 'grid', got {spacing!r}")


class Dcis:
    name = "dcis"
    params = DcisParams
    # DCIS starts from YaRN, whose attention factor 0.1 ln s + 1 it keeps.
    default_attention = "yarn"
    start_token_choices = (0,)
    searches_attention = True

    def seed_methods(self, params: DcisParams) -> tuple[str, ...]:
        """``init`` first (the vector DCIS refines), then the usual seeds."""
        first = (params.init,) if params.init else ()
        return (*first, *(name for name in SEED_METHODS if name != params.init))

    def batch_hint(self, params: DcisParams) -> int:
        """Candidates scored per objective call."""
        return params.candidates

    def expected_evaluations(self, space: SearchSpace, params: DcisParams) -> int:
        pairs = space.pairs
        levels = min(params.levels or level_count(pairs), level_count(pairs))
        attention_steps = 2 if space.attention is not None else 0
        return 1 + params.candidates * (
            attention_steps + sum(len(segments(pairs, level)) for level in range(1, levels + 1))
        )

    def run(
        self,
        objective: Objective,
        space: SearchSpace,
        params: DcisParams,
        seed: int,
        on_step: Callable[[float], None] | None = None,
    ) -> SearchResult:
        if params.candidates < 1:
            raise RopextError(f"dcis needs candidates >= 1, got {params.candidates}")
        if params.levels is not None and params.levels < 1:
            raise RopextError(f"dcis needs levels >= 1 (or unset for all), got {params.levels}")
        if params.max_factor is not None and params.max_factor <= params.min_factor:
            raise RopextError(f"dcis needs max_factor > min_factor, got {params.max_factor} <= {params.min_factor}")
        rng = random.Random(seed)
        low = params.min_factor
        high = params.max_factor if params.max_factor is not None else 1.25 * space.scale
        lows = [max(low, space.floor(i)) for i in range(space.pairs)]
        if max(lows) > high:
            raise RopextError(f"dcis max_factor {high:g} is below the critical floor {max(lows):g}; raise it")
        current = Candidate(
            tuple(min(max(x, lo), high) for x, lo in zip(space.initial[0], lows, strict=True)),
            attention=space.attention,
        )
        score = objective([current])[0]
        history = [score]
        requested = 1

        def take_best(proposals: list[Candidate]) -> None:
            """Score a step's proposals; the best replaces the incumbent only if it beats it."""
            nonlocal current, score, requested
            # Only a proposal better than the incumbent matters: the incumbent is the bound.
            scores = objective(proposals, bound=current)
            requested += len(proposals)
            best, best_score = best_of(proposals, scores)
            if best_score < score:
                current, score = best, best_score
            history.append(score)
            if on_step is not None:
                on_step(score)

        def attention_step() -> None:
            if current.attention is not None:
                steps = increments(rng, params.candidates, ATTENTION_RANGE, params.spacing)
                take_best([replace(current, attention=_bounded_attention(current.attention * (1 + v))) for v in steps])

        attention_step()
        # (s − 1)/2 spans PI ± half its distance from the original; a floor keeps short-context
        # searches (s = 1) from having an empty range.
        half_width = params.first_range if params.first_range is not None else max((space.scale - 1) / 2, 0.25)
        levels = min(params.levels or level_count(space.pairs), level_count(space.pairs))
        for level in range(1, levels + 1):
            # Within a level, the low-frequency end first (the figure's order).
            for start, stop in reversed(segments(space.pairs, level)):
                proposals = []
                for v in increments(rng, params.candidates, half_width, params.spacing):
                    factors = list(current.factors)
                    for i in range(start, stop):
                        factors[i] = min(max(factors[i] + v, lows[i]), high)
                    proposals.append(Candidate(tuple(factors), attention=current.attention))
                take_best(proposals)
            half_width *= params.shrink
        attention_step()
        return SearchResult(current, score, requested, history, asdict(params))


def _bounded_attention(value: float) -> float:
    from ropext.scaling import ATTENTION_FACTOR_RANGE

    low, high = ATTENTION_FACTOR_RANGE
    return min(max(value, low), high)


DCIS = Dcis()
