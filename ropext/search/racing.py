"""Racing: a candidate whose first windows show it cannot beat the searcher's bound stops being scored.

A searcher may say which already scored candidate a call's candidates must beat to matter (the
*reference*: DCIS's incumbent, LongRoPE's worst surviving parent). The engine then scores the windows
in stages (``stages``) and, after every stage but the last, compares each candidate's mean NLL over
the windows seen so far with the reference's over the same windows (paired: the same documents, so
most of their difficulty cancels). A candidate worse by more than ``margin`` nats per scored token is
*raced out*: it gets the score ``math.inf`` (never better than the bound), is cached and journaled as
raced, and its remaining windows are never evaluated. See docs/search.md, "Racing".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RACE_BY_DEFAULT = False
"""Whether ``ropext search`` races (``--race/--no-race``). Off until a GPU measurement shows it loses
nothing (docs/decisions.md): on, the committed searches' journals would not resume and reruns would
not reproduce their factors."""
DEFAULT_MARGIN = 0.005
"""Nats per scored token a candidate may trail the reference by on its first windows and still be
scored in full (``--race-margin``). Replayed on the per-window scores of a real DCIS 8k -> 64k search
(bench/racing_replay.py, docs/search.md "Racing"), margins from 0.001 up kept its path and factors and
0.0005 changed them; 0.005 keeps ten times that distance and saves 19% of the windows."""
SCHEDULE = "first-half-rest"
"""The name of ``stages``' schedule; it is part of a racing journal's identity, so a new schedule is a new name."""


def stages(count: int) -> list[range]:
    """Windows scored together: window 0; then windows 1 .. ceil(n/2) - 1; then the rest (empty stages left out).

    One window is the cheapest look that can already condemn a clearly bad candidate; half the windows
    judge the close ones; the rest finishes the survivors. Every stage is a prefix's continuation, so a
    partial result is always over windows 0 .. k - 1.
    """
    assert count >= 1, f"racing needs at least one window, got {count}"
    cuts = sorted({0, 1, math.ceil(count / 2), count})
    return [range(a, b) for a, b in itertools.pairwise(cuts)]


@dataclass(frozen=True)
class Racing:
    """Racing settings of a search (``ropext search --race --race-margin X``)."""

    margin: float = DEFAULT_MARGIN
    """Nats per scored token by which a candidate's partial mean NLL must exceed the reference's to be dropped."""

    def identity(self) -> dict[str, Any]:
        """What a racing journal's identity records: another margin or schedule is another search."""
        return {"margin": self.margin, "schedule": SCHEDULE}

    def drops(self, partial: float, reference: float) -> bool:
        """Whether a candidate with this partial log-score cannot beat the reference with its own."""
        return partial - reference > self.margin


@dataclass(frozen=True)
class Scoring:
    """How per-window NLL sums become a candidate's log-score (the log of the score the searcher sees)."""

    predicted: int
    """Next tokens per window (window length - 1)."""
    answer_lengths: tuple[int, ...] | None = None
    """Per window, the trailing tokens scored; None: every next token."""
    mix_weight: float | None = None
    """With answer_lengths: the answers' share, the rest being every next token's mean NLL."""

    def log_score(self, nll: Sequence[float], whole: Sequence[float] | None = None) -> float:
        """Mean NLL per scored token over windows 0 .. len(nll) - 1 (a prefix: every partial result is one).

        Over all windows this is exactly the arithmetic the engine used before racing existed, so a
        candidate scored in full gets the same bits with racing on or off.
        """
        windows = len(nll)
        total = sum(nll)
        scored = self.predicted * windows if self.answer_lengths is None else sum(self.answer_lengths[:windows])
        if self.mix_weight is None:
            return total / scored
        assert whole is not None and len(whole) == windows, f"a mix needs every token's NLL per window, got {whole}"
        mean_whole = sum(whole) / (self.predicted * windows)
        return (1 - self.mix_weight) * mean_whole + self.mix_weight * total / scored
