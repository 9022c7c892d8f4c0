"""Retrieval practice in training windows (`ropext finetune --needle-share P`).

A share P of the windows carry `NEEDLES` sentences, each binding a random word to a random 6-digit number,
inserted into the window's own text at stratified random depths; the window ends with a question about one
of them and its answer. The language-model loss over books barely rewards fetching one fact from far back
(the few tokens that need it drown among thousands), so the answer's tokens get a loss of their own
(`ANSWER_WEIGHT`, see ropext/train/loss.py).

Whether window k carries practice, and what it holds, is a pure function of (seed, k), from a generator of
its own (apart from the packing's and `PositionPlan`'s), so --short-share's choices do not change and a
resumed run sees the same windows. Insertion works on token ids: the window's packed tokens are cut at a
token boundary to make room, and each sentence is tokenised alone, so the window is never re-tokenised.

What a practice window asks is its kind (`--practice`, `KINDS`): one code among four needles (`SINGLE`, the
only kind before --practice existed), two codes in one question (`MULTI_QUERY`), or every code one word has
(`MULTI_VALUE`). A window's kind is drawn from a stream of its own, (seed, 3, window), so the draws of
`SINGLE` windows are the same whichever kinds are listed beside it, and `--practice single` trains exactly
the windows of runs made before the option.

The wording differs from every evaluation ropext has (passkey: "The pass key is"; RULER and the search's
needle objective: "special magic number"), so those stay tests of generalisation, not of the drill.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from ropext.data.tokenized import special_prefix
from ropext.errors import RopextError

NEEDLES = 4
"""Needle sentences per practice window: several, so the question must pick the right one, not the only
number in sight; few, so they take little of a window (about 60 tokens of 8k for SmolLM2). A `MULTI_VALUE`
window has its asked word's 2 or 3 needles and NEEDLES - 1 of other words."""
ANSWER_WEIGHT = 1.0
"""A practice window's loss is its mean NLL over all next tokens + ANSWER_WEIGHT × its mean NLL over the
answer's tokens. Provisional: unmeasured until the GPU runs of issue 12 compare values."""
MIN_TEXT_TOKENS = 32
"""Text a practice window keeps at the least (the shortest allowed --train-length includes it), so the
needles are hidden in text rather than stacked on each other."""

SINGLE: Final = "single"
MULTI_QUERY: Final = "multi-query"
MULTI_VALUE: Final = "multi-value"
KINDS: Final = (SINGLE, MULTI_QUERY, MULTI_VALUE)
"""What a practice window asks (`--practice`), in the order a list of them is kept in."""
DEFAULT_PRACTICE: Final = (SINGLE,)

NEEDLE_TEXT = " Remember this: the code for {word} is {number}."
QUESTION_TEXT = " What is the code for {word}? The code for {word} is"
ANSWER_TEXT = " {number}."
MULTI_QUERY_QUESTION_TEXT = " What are the codes for {first} and {second}? The codes for {first} and {second} are"
MULTI_VALUE_NEEDLE_TEXT = " Remember this: one code for {word} is {number}."
"""Every needle of a `MULTI_VALUE` window, the other words' too: the wording must not tell which word has several."""
MULTI_VALUE_QUESTION_TEXT = " What are all the codes for {word}? The codes for {word} are"
QUERIED = 2
"""Words a `MULTI_QUERY` question asks about."""
VALUES = (2, 3)
"""Needles the asked word of a `MULTI_VALUE` window has, drawn uniformly."""
_NUMBERS = (100_000, 1_000_000)
"""6-digit numbers, [low, high)."""
_PROBED_WORDS = 50
"""Words (those that tokenise longest alone) whose sentences `NeedlePlan.shortest_length` measures."""
_STREAM = 2
"""Generator stream of the practice choices: (seed, 2, window); the packing uses (seed, epoch) and
`PositionPlan` (seed, 1, window)."""
_KIND_STREAM = 3
"""Generator stream of a practice window's kind: (seed, 3, window), so `_STREAM`'s draws stay those of a
run with one kind."""


@functools.cache
def practice_words() -> tuple[str, ...]:
    """wonderwords' nouns (a dependency) that are one lowercase word (no acronyms, no two-word entries), sorted
    so that a seed gives the same words everywhere."""
    from wonderwords import RandomWord

    nouns = RandomWord().filter(include_categories=["nouns"])
    return tuple(sorted({w.strip() for w in nouns if w.strip().isalpha() and w.strip().islower()}))


def check_needle_share(share: float) -> None:
    if not 0 <= share < 1:
        raise RopextError(
            f"--needle-share must be in [0, 1) (the share of windows with retrieval practice), got {share}"
        )


def parse_practice(text: str) -> tuple[str, ...]:
    """``--practice``'s comma list as kinds in `KINDS` order, each once: the order and repeats a user types
    change neither the windows nor a checkpoint's identity."""
    given = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in given if kind not in KINDS]
    if unknown or not given:
        what = f"unknown practice kind {unknown[0]!r}" if unknown else "no practice kind"
        raise RopextError(f"--practice: {what}; use a comma list of {', '.join(KINDS)} (e.g. --practice {SINGLE})")
    return tuple(kind for kind in KINDS if kind in given)


def answer_text(numbers: Sequence[int]) -> str:
    """The answer: `ANSWER_TEXT` for one number, " 1 and 2." for two, " 1, 2 and 3." for three."""
    shown = [str(n) for n in numbers]
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
    return ANSWER_TEXT.format(number=listed)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class Practice:
    """What one practice window holds (besides its text). Needle i binds ``words[i]`` to ``numbers[i]``;
    needles are in window order."""

    words: tuple[str, ...]
    numbers: tuple[int, ...]
    asked: tuple[int, ...]
    """The needles whose numbers the answer gives, in the answer's order."""
    depths: tuple[float, ...]
    """Needle i's depth in the window's remaining text, in ((i + 0.05) / K, (i + 0.95) / K) for K needles."""
    needle_starts: tuple[int, ...]
    """Index in the window of each needle's first token."""
    answer_tokens: int
    """The answer's tokens end the window."""
    kind: str = SINGLE


@dataclass(frozen=True)
class _Drill:
    """A practice window's sentences before they are placed: needle i binds words[i] to numbers[i]."""

    words: tuple[str, ...]
    numbers: tuple[int, ...]
    asked: tuple[int, ...]
    needle_text: str
    question: str

    @property
    def needles(self) -> list[str]:
        return [self.needle_text.format(word=w, number=n) for w, n in zip(self.words, self.numbers, strict=True)]

    @property
    def answer(self) -> str:
        return answer_text([self.numbers[i] for i in self.asked])


def _words(rng: np.random.Generator, count: int) -> tuple[str, ...]:
    picked = rng.choice(len(practice_words()), size=count, replace=False)
    return tuple(practice_words()[int(i)] for i in picked)


def _single(rng: np.random.Generator) -> _Drill:
    # The draws and their order are those of every run before --practice: committed runs rerun identically.
    words = _words(rng, NEEDLES)
    numbers = tuple(int(n) for n in rng.integers(*_NUMBERS, size=NEEDLES))
    asked = int(rng.integers(NEEDLES))
    return _Drill(words, numbers, (asked,), NEEDLE_TEXT, QUESTION_TEXT.format(word=words[asked]))


def _multi_query(rng: np.random.Generator) -> _Drill:
    words = _words(rng, NEEDLES)
    numbers = tuple(int(n) for n in rng.integers(*_NUMBERS, size=NEEDLES))
    asked = tuple(int(i) for i in rng.choice(NEEDLES, size=QUERIED, replace=False))
    first, second = (words[i] for i in asked)
    return _Drill(words, numbers, asked, NEEDLE_TEXT, MULTI_QUERY_QUESTION_TEXT.format(first=first, second=second))


def _multi_value(rng: np.random.Generator) -> _Drill:
    values = int(rng.choice(VALUES))
    words = _words(rng, NEEDLES)  # words[0] is asked; the others get one needle each
    # Distinct numbers, so an answer's codes are told apart and none doubles as another word's.
    count = values + NEEDLES - 1
    numbers = [int(n) + _NUMBERS[0] for n in rng.choice(_NUMBERS[1] - _NUMBERS[0], size=count, replace=False)]
    owners = [0] * values + list(range(1, NEEDLES))
    order = rng.permutation(count)  # which stratum each needle takes: the asked word's anywhere
    placed = [owners[int(i)] for i in order]
    return _Drill(
        tuple(words[o] for o in placed),
        tuple(numbers[int(i)] for i in order),
        tuple(slot for slot, owner in enumerate(placed) if owner == 0),  # window order
        MULTI_VALUE_NEEDLE_TEXT,
        MULTI_VALUE_QUESTION_TEXT.format(word=words[0]),
    )


_DRILLS = {SINGLE: _single, MULTI_QUERY: _multi_query, MULTI_VALUE: _multi_value}


@dataclass(frozen=True)
class NeedlePlan:
    """Which training windows carry retrieval practice, and the practice they carry."""

    length: int
    share: float = 0.0
    seed: int = 0
    tokenizer: Any = field(default=None, compare=False, repr=False)
    kinds: tuple[str, ...] = DEFAULT_PRACTICE
    """What practice windows ask (`KINDS`), each window one of them drawn uniformly."""

    @property
    def active(self) -> bool:
        return self.share > 0

    @functools.cached_property
    def prefix(self) -> tuple[int, ...]:
        """The windows' leading special tokens (`PackedWindows.prefix`), which practice never moves."""
        return tuple(special_prefix(self.tokenizer))

    def _rng(self, sample: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _STREAM, sample])

    def carries(self, sample: int) -> bool:
        """Whether window ``sample`` carries retrieval practice."""
        return self.share > 0 and bool(self._rng(sample).random() < self.share)

    def kind(self, sample: int) -> str:
        """What practice window ``sample`` asks: one of `kinds`, uniformly, from a stream of its own."""
        if len(self.kinds) == 1:
            return self.kinds[0]
        return self.kinds[int(np.random.default_rng([self.seed, _KIND_STREAM, sample]).integers(len(self.kinds)))]

    def shortest_length(self) -> int:
        """The shortest train length that holds the needles, question, answer and `MIN_TEXT_TOKENS` of text,
        for the longest of `kinds`.

        Measured with this tokenizer on the words that tokenise longest alone and the numbers' extremes: a
        sentence's length follows its word's, and the margin of text absorbs a token more or less.
        """
        words = list(practice_words())
        alone = _encode(self.tokenizer, [f" {w}" for w in words])
        longest = [w for _, w in sorted(zip(map(len, alone), words, strict=True), reverse=True)[:_PROBED_WORDS]]
        numbers = [_NUMBERS[0], _NUMBERS[1] - 1, 123_456, 987_654, 505_050]

        def most(texts: list[str]) -> int:
            return max(map(len, _encode(self.tokenizer, texts)))

        def needles(template: str) -> int:
            return most([template.format(word=w, number=n) for w in longest for n in numbers])

        def answers(count: int) -> int:
            return most([answer_text([n] * count) for n in numbers])

        # Each question repeats a longest word in every slot: at least as long as any pair of words.
        sizes = {
            SINGLE: NEEDLES * needles(NEEDLE_TEXT) + most([QUESTION_TEXT.format(word=w) for w in longest]) + answers(1),
            MULTI_QUERY: NEEDLES * needles(NEEDLE_TEXT)
            + most([MULTI_QUERY_QUESTION_TEXT.format(first=w, second=w) for w in longest])
            + answers(QUERIED),
            MULTI_VALUE: (max(VALUES) + NEEDLES - 1) * needles(MULTI_VALUE_NEEDLE_TEXT)
            + most([MULTI_VALUE_QUESTION_TEXT.format(word=w) for w in longest])
            + answers(max(VALUES)),
        }
        return max(sizes[kind] for kind in self.kinds) + MIN_TEXT_TOKENS + len(self.prefix)

    def check_length(self) -> None:
        """Refuse a train length too short for practice windows, naming the shortest that works."""
        if not self.active:
            return
        shortest = self.shortest_length()
        if self.length < shortest:
            raise RopextError(
                f"--needle-share needs --train-length of at least {shortest} tokens with this tokenizer "
                f"(the needles, the question and the answer of --practice {','.join(self.kinds)}, and "
                f"{MIN_TEXT_TOKENS} tokens of text); got {self.length}"
            )

    def insert(self, window: np.ndarray, sample: int) -> tuple[np.ndarray, Practice]:
        """Window ``sample``'s tokens with practice inserted (same length, int64), and what it holds.

        The text keeps its first tokens (the rest is cut to make room); needle i goes in at depth
        ``depths[i]`` of that text, and the question and answer end the window.
        """
        rng = self._rng(sample)
        rng.random()  # the draw of `carries`
        kind = self.kind(sample)
        drill = _DRILLS[kind](rng)
        count = len(drill.words)
        depths = tuple(float((i + 0.05 + 0.9 * rng.random()) / count) for i in range(count))
        *needles, question, answer = _encode(self.tokenizer, [*drill.needles, drill.question, drill.answer])
        room = self.length - sum(map(len, needles)) - len(question) - len(answer)
        if room < 1:  # check_length makes this unreachable for the words and numbers there are
            raise RopextError(
                f"a practice window of {self.length} tokens has no room for text (window {sample}); "
                "use a longer --train-length"
            )
        text = window[:room]
        # The window's leading special tokens (<bos>, where the tokenizer puts one) stay first.
        lead = len(self.prefix)
        pieces: list[np.ndarray] = []
        starts: list[int] = []
        begin, filled = 0, 0
        for depth, needle in zip(depths, needles, strict=True):
            at = lead + round(depth * (room - lead))
            pieces.append(text[begin:at])
            filled += at - begin
            starts.append(filled)
            pieces.append(np.asarray(needle, dtype=np.int64))
            filled += len(needle)
            begin = at
        pieces += [text[begin:], np.asarray(question + answer, dtype=np.int64)]
        ids = np.concatenate(pieces).astype(np.int64)
        assert len(ids) == self.length, (len(ids), self.length)
        return ids, Practice(drill.words, drill.numbers, drill.asked, depths, tuple(starts), len(answer), kind)

    def batch(self, windows: np.ndarray, first_sample: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``first_sample ..`` with practice where they carry it, and a bool [rows, length] mask of
        their answer tokens (all False in windows without practice)."""
        ids = windows.copy()
        answers = np.zeros(windows.shape, dtype=bool)
        for row in range(len(windows)):
            sample = first_sample + row
            if self.carries(sample):
                ids[row], practice = self.insert(windows[row], sample)
                answers[row, self.length - practice.answer_tokens :] = True
        return ids, answers
