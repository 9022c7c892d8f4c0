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

    def key(self) -> str:
        """Content hash: the same factors (bit for bit) and n̂ give the same key."""
        digest = hashlib.sha256(struct.pack(f"<{len(self.factors)}d", *self.factors))
        digest.update(struct.pack("<q", self.start_tokens))
        return digest.hexdigest()[:24]


Objective = Callable[[Sequence[Candidate]], list[float]]


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


class Searcher(Protocol):
    name: str
    params: type

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
