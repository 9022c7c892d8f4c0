"""Fitting a RULER sample into a length: the most haystack units whose whole prompt, in the model's own
tokens, is at most the length.

The prompt is the tokenizer's own leading special tokens (a BOS token where the tokenizer adds one, as
RULER's ``tokenizer(text)`` counts it), then the worked example (vt, cwe), the instruction, the haystack, the
question and the answer prefix. The fit is exact: with ``n`` units the prompt fits and with ``n + 1`` it does
not, so every prompt is within one haystack unit of the length and never above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ropext.data.tokenized import encode
from ropext.errors import RopextError
from ropext.evaluate.ruler.tasks import TaskSample

SHOTS_SHARE = 4
"""A worked example is kept only while it takes at most 1/SHOTS_SHARE of the length (RULER's example is
about 500 tokens at 4k and more; short test lengths could not hold it)."""
_MAX_STEPS = 200
_GROWTH = 32
_SECANT_STEPS = 8


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (``[bos]`` for Llama, ``[]`` for many others)."""
    plain = encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def fit_units(
    count: Callable[[int], int], budget: int, max_units: int | None = None, hint: int | None = None
) -> int | None:
    """The ``n`` with ``count(n) <= budget < count(n + 1)`` (or ``n == max_units``); None when ``count(0) > budget``.

    ``count`` is the prompt's token count with ``n`` units, nearly linear in ``n``: the search takes secant
    steps through the last two counts (growing at most `_GROWTH` times a step, kept inside the bracket once
    one is known) and bisects if that has not closed the bracket after a few steps. ``hint`` (the previous
    sample's answer) is tried first. Usually three to six tokenisations of the whole prompt; the answer is
    exact whatever the tokenizer's merges do.
    """
    base = count(0)
    if base > budget:
        return None
    lo, c_lo = 0, base
    hi = None if max_units is None else max_units + 1  # known not to fit (max_units + 1: does not exist)
    points = [(0, base)]
    guess = hint if hint is not None and hint > 0 else None
    bracketed_steps = 0
    for _ in range(_MAX_STEPS):
        if hi is not None and hi - lo <= 1:
            return lo
        if guess is None:
            (n1, c1), (n2, c2) = points[-2:] if len(points) > 1 else (points[0], points[0])
            if hi is not None and bracketed_steps >= _SECANT_STEPS:
                guess = (lo + hi) // 2
            elif c2 != c1:
                guess = n2 + int((budget - c2) * (n2 - n1) / (c2 - c1))
            else:
                guess = 2 * lo  # no growth seen yet (units too small to add a token): gallop
            guess = min(guess, _GROWTH * max(lo, 1))
        guess = max(guess, lo + 1)
        if hi is not None:
            guess = min(guess, hi - 1)
            bracketed_steps += 1
        tokens = count(guess)
        points.append((guess, tokens))
        if tokens <= budget:
            lo, c_lo = guess, tokens
        else:
            hi = guess
        guess = None
    raise RuntimeError(f"the haystack stopped growing: {lo} units take {c_lo} of {budget} tokens")


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    units: int
    """Haystack units in it."""
    shots: bool
    """Whether the worked example is in it."""


def build_prompt(
    tokenizer: Any, sample: TaskSample, length: int, prefix: Sequence[int] = (), hint: int | None = None
) -> Prompt:
    """``sample``'s prompt with as many haystack units as fit in ``length`` tokens (``prefix`` included)."""
    prefix = list(prefix)
    shots = bool(sample.shots) and len(encode(tokenizer, sample.shots)) <= length // SHOTS_SHARE
    counted: dict[int, int] = {}
    best: tuple[int, list[int]] | None = None

    def count(units: int) -> int:
        nonlocal best
        if units not in counted:
            ids = encode(tokenizer, sample.text(units, shots))
            counted[units] = len(prefix) + len(ids)
            if counted[units] <= length and (best is None or units > best[0]):
                best = (units, ids)
        return counted[units]

    units = fit_units(count, length, sample.max_units, hint)
    if units is None:
        raise RopextError(
            f"RULER {sample.task} does not fit in {length} tokens: its prompt takes {counted[0]} tokens "
            "before any haystack; choose a longer length"
        )
    assert best is not None and best[0] == units
    return Prompt(prefix + best[1], units, shots)
