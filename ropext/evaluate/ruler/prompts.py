"""Fitting a RULER sample into a budget, the length less the tokens to generate (prompt and answer fit in the
length together, as in RULER): the most haystack units whose whole prompt, in the model's own tokens, is at most
the budget, then the start of the sample's filler text that brings it to the budget.

The prompt is the tokenizer's own leading special tokens (a BOS token where the tokenizer adds one, as
``tokenizer(text)`` adds it; none where a chat template is applied, which writes its own), then the chat template's
opening, the worked example (vt, cwe), the instruction, the haystack, the question, the chat template's closing
(its generation prompt) and the answer prefix. The unit fit is exact: with ``n`` units the prompt fits and with
``n + 1`` it does not. The filler (the next units' text, or neutral text where a cut unit could change the
answer; see `TaskSample.filler`) then follows the haystack, cut at a character where the prompt reaches the
budget. Where one more character adds at most one token, as it does for ordinary text and byte-level BPE
tokenizers, the prompt is then exactly the budget; where it adds two (a character that is several tokens, or a
merge undone), it can be one token short. Where no cut comes that close (a token across the haystack's end and
the question split by the filler's first character, a newline run merged with the question's, a character of
several tokens), the prompt takes one whole unit fewer, or filler from further on (`_RETRIES`). Everything is
tokenised as one text: the ids are the tokenizer's own for the prompt's text, never token lists cut and joined."""

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


def fit_units(
    count: Callable[[int], int],
    budget: int,
    max_units: int | None = None,
    hint: int | None = None,
    stop_at_budget: bool = False,
) -> int | None:
    """The ``n`` with ``count(n) <= budget < count(n + 1)`` (or ``n == max_units``); None when ``count(0) > budget``.
    With ``stop_at_budget``, the first ``n`` tried with ``count(n) == budget`` instead, where any such ``n`` is as
    good (filler characters: a plateau of counts at the budget would take a step per character to cross).

    ``count`` is the prompt's token count with ``n`` units (haystack units, or characters of filler text),
    nearly linear in ``n``: the search takes secant steps through the last two counts (growing at most
    `_GROWTH` times a step, kept inside the bracket once one is known) and bisects if that has not closed the
    bracket after a few steps. ``hint`` (the previous sample's answer) is tried first. Usually three to six
    tokenisations of the whole prompt; the answer is exact whatever the tokenizer's merges do.
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
        if stop_at_budget and tokens == budget:
            return guess
        points.append((guess, tokens))
        if tokens <= budget:
            lo, c_lo = guess, tokens
        else:
            hi = guess
        guess = None
    raise RuntimeError(f"the haystack stopped growing: {lo} units take {c_lo} of {budget} tokens")


_SPARE_TOKENS = 8
"""Filler text is drawn until, on its own, it takes this many tokens more than the room left, so that all of it
would not fit (tokens at its joins with the haystack and the question may merge)."""


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    units: int
    """Whole haystack units in it."""
    shots: bool
    """Whether the worked example is in it."""
    filler: str = ""
    """A start of the sample's filler text (from the unit after the haystack, or rarely the one after that):
    ``sample.text(units, shots, filler)`` is the prompt's text, special tokens aside."""


def build_prompt(
    tokenizer: Any,
    sample: TaskSample,
    length: int,
    prefix: Sequence[int] = (),
    hint: int | None = None,
    new_tokens: int = 0,
) -> Prompt:
    """``sample``'s prompt in ``length - new_tokens`` tokens (``prefix`` included), so that the prompt and the
    ``new_tokens`` generated after it fit in ``length``, as RULER keeps them: as many whole haystack units as fit
    (``hint``: the previous sample's count, tried first), then as much of its filler as fits."""
    prefix = list(prefix)
    shots = bool(sample.shots) and len(encode(tokenizer, sample.shots)) <= length // SHOTS_SHARE
    budget = length - new_tokens - len(prefix)
    fitted = _fit_units(tokenizer, sample, shots, budget, hint)
    if fitted is None:
        needs = len(prefix) + len(encode(tokenizer, sample.text(0, shots)))
        raise RopextError(
            f"RULER {sample.task} does not fit in {length} tokens: its prompt takes {needs} tokens "
            f"before any haystack, and its answer {new_tokens} more; choose a longer length"
        )
    units, filler, ids = _fill(tokenizer, sample, *fitted, shots, budget)
    return Prompt(prefix + ids, units, shots, filler)


_RETRIES = ((1, 0), (1, 1), (0, 1), (0, 2))
"""(whole units fewer, filler units skipped) tried in turn while the prompt is more than a token short; the
closest prompt of all is kept. One unit fewer: the filler's first character split a token across the
haystack's end and the question (SentencePiece-style pieces such as ".\nWhat" cross the newline), adding
several, and more room lets further characters add a token at a time. One unit fewer and the filler from the
unit after: the filler's own join between two units fell just short of the length, where the same units leave
it again (byte-level BPE: a qa document's closing "\n\n" merges with the question's "\n\n", and the next
"Document" undoes that, adding three tokens). The same units and the filler from one or two units later: the
cut fell just before a character of several tokens (in prose, a dash or a letter the tokenizer has no token
for), which the text after one unit fewer meets again at the same place."""


def _fill(
    tokenizer: Any, sample: TaskSample, units: int, ids: list[int], shots: bool, budget: int
) -> tuple[int, str, list[int]]:
    """Whole units, filler and ids closest to ``budget`` tokens: the filler after ``units`` units and, where that
    leaves the prompt more than a token short, the `_RETRIES` (the closest of all)."""
    filler, filled = _fit_filler(tokenizer, sample, units, shots, budget, ids)
    best = (units, filler, filled)
    if units == sample.max_units:
        return best  # no unit left to fill with
    for fewer, skip in _RETRIES:
        if len(best[2]) >= budget - 1:
            break
        if fewer > units:
            continue
        start = encode(tokenizer, sample.text(units - fewer, shots)) if fewer else ids
        filler, filled = _fit_filler(tokenizer, sample, units - fewer, shots, budget, start, skip)
        if len(filled) > len(best[2]):
            best = (units - fewer, filler, filled)
    return best


def _fit_units(
    tokenizer: Any, sample: TaskSample, shots: bool, budget: int, hint: int | None
) -> tuple[int, list[int]] | None:
    """The most whole units whose text takes at most ``budget`` tokens, and that text's ids; None if none fit."""
    counted: dict[int, int] = {}
    best: tuple[int, list[int]] | None = None

    def count(units: int) -> int:
        nonlocal best
        if units not in counted:
            ids = encode(tokenizer, sample.text(units, shots))
            counted[units] = len(ids)
            if counted[units] <= budget and (best is None or units > best[0]):
                best = (units, ids)
        return counted[units]

    units = fit_units(count, budget, sample.max_units, hint)
    if units is None:
        return None
    assert best is not None and best[0] == units
    return best


def _fit_filler(
    tokenizer: Any, sample: TaskSample, units: int, shots: bool, budget: int, ids: list[int], skip: int = 0
) -> tuple[str, list[int]]:
    """A start of the filler after ``units`` units (``skip``: starting that many units later) that brings the
    text to ``budget`` tokens, or, where no start
    does, the longest that stays below (`fit_units` over characters), and the text's ids. ("", ids) when the
    prompt is full already.

    The search starts from the characters the room left should take at the filler's own characters per token,
    so it usually needs one to three tokenisations of the whole prompt (bisection would need log2 of the
    filler's characters)."""
    room = budget - len(ids)
    spare = _spare(tokenizer, sample, units, room, skip) if room > 0 else ""
    if not spare:
        return "", ids
    counted = {0: len(ids)}
    best = (0, ids)

    def count(chars: int) -> int:
        nonlocal best
        if chars not in counted:
            chars_ids = encode(tokenizer, sample.text(units, shots, spare[:chars]))
            counted[chars] = len(chars_ids)
            if counted[chars] <= budget and chars > best[0]:
                best = (chars, chars_ids)
        return counted[chars]

    per_token = len(spare) / max(1, len(encode(tokenizer, spare)))
    chars = fit_units(count, budget, len(spare), hint=int(room * per_token), stop_at_budget=True)
    assert chars is not None and best[0] == chars
    return spare[:chars], best[1]


def _spare(tokenizer: Any, sample: TaskSample, units: int, room: int, skip: int) -> str:
    """Enough of the sample's filler after ``units`` units to more than fill ``room`` tokens (or all there is).
    Filler alone is short, so tokenising it is cheap next to the whole prompt."""
    if sample.filler is None:
        return ""
    pieces, text = 1, ""
    while True:
        longer = sample.filler(units, pieces, skip)
        if len(longer) <= len(text):  # nothing more to draw (qa: no document left)
            return text
        text = longer
        if len(encode(tokenizer, text)) > room + _SPARE_TOKENS:
            return text
        pieces *= 2
