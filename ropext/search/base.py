"""What searchers exchange with the objective: candidates, and the searcher protocol."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Candidate:
    """A point of the search space: per-pair factors and LongRoPE's n̂ (0 for searchers without it)."""

    factors: tuple[float, ...]
    start_tokens: int = 0
    attention: float | None = None
    """The attention factor when the searcher varies it (``--attention-factor search``); None: the search's
    fixed one."""

    def key(self) -> str:
        """Content hash: the same factors (bit for bit), n̂ and attention factor give the same key."""
        digest = hashlib.sha256(struct.pack(f"<{len(self.factors)}d", *self.factors))
        digest.update(struct.pack("<q", self.start_tokens))
        if self.attention is not None:  # absent when fixed, so keys made before it existed are unchanged
            digest.update(struct.pack("<d", self.attention))
        return digest.hexdigest()[:24]


class Objective(Protocol):
    """What a searcher calls: scores of the candidates, lower is better.

    ``bound`` (optional) is an already scored candidate the call's candidates must beat to matter to the
    searcher (DCIS: the incumbent). An objective that races (``ropext.search.racing``) may then stop
    scoring a candidate that clearly cannot beat it and return ``math.inf`` for it; a searcher must
    treat such a score as "worse than the bound", never as a measurement.
    """

    def __call__(self, candidates: Sequence[Candidate], bound: Candidate | None = None) -> list[float]: ...


@dataclass(frozen=True)
class SearchSpace:
    """What a searcher may assume about the problem."""

    pairs: int
    """Number of factors (rotary_dim / 2)."""
    scale: float
    """s = target / original length."""
    initial: tuple[tuple[float, ...], ...]
    """Starting vectors, best guess first (e.g. the --from file, then PI, NTK, YaRN)."""
    start_tokens_choices: tuple[int, ...] = (0,)
    """n̂ values a searcher may try (LongRoPE only)."""
    floors: tuple[float, ...] | None = None
    """Lowest factor each pair may take (None: no bound beyond the searcher's own), e.g. s for the pairs
    that never complete a turn within the original context (``ropext.critical``)."""
    attention: float | None = None
    """The attention factor to start from when the searcher may vary it (``--attention-factor search``);
    None: it is fixed and candidates carry none."""

    def floor(self, pair: int) -> float:
        return 1.0 if self.floors is None else self.floors[pair]


@dataclass
class SearchResult:
    best: Candidate
    score: float
    evaluations: int
    history: list[float] = field(default_factory=list)
    """Best score after each step (for progress and plots)."""
    params: dict[str, Any] = field(default_factory=dict)


SEED_METHODS = ("pi", "ntk", "yarn")
"""Closed-form methods whose vectors start a search by default (after a --from file), best guess first."""

FACTS = ("default_attention", "start_token_choices", "seed_methods")
"""What every searcher says about itself, so ``ropext search`` needs no table of searcher names."""


class Searcher(Protocol):
    """A registry entry of ``ropext.search.SEARCHERS``; a plugin searcher provides the same."""

    name: str
    params: type
    default_attention: str
    """Attention factor a found vector carries unless --attention-factor says otherwise: ``yarn``
    (0.1 ln s + 1), ``longrope`` (sqrt(1 + ln s / ln L0)), ``none`` or a number."""
    start_token_choices: tuple[int, ...]
    """n̂ values the searcher may try; ``(0,)`` when it does not search n̂."""

    def seed_methods(self, params: Any) -> tuple[str, ...]:
        """Closed-form methods whose vectors start the search (after a --from file), best guess first."""
        ...

    def expected_evaluations(self, space: SearchSpace, params: Any) -> int: ...

    def batch_hint(self, params: Any) -> int: ...

    def run(
        self,
        objective: Objective,
        space: SearchSpace,
        params: Any,
        seed: int,
        on_step: Callable[[float], None] | None = None,
    ) -> SearchResult: ...


def best_of(candidates: Sequence[Candidate], scores: Sequence[float]) -> tuple[Candidate, float]:
    """The lowest score, earliest on ties (so results do not depend on evaluation order)."""
    index = min(range(len(scores)), key=lambda i: (scores[i], i))
    return candidates[index], scores[index]
