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

The wording differs from every evaluation ropext has (passkey: "The pass key is"; RULER and the search's
needle objective: "special magic number"), so those stay tests of generalisation, not of the drill.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ropext.errors import RopextError

NEEDLES = 4
"""Needle sentences per practice window: several, so the question must pick the right one, not the only
number in sight; few, so they take little of a window (about 60 tokens of 8k for SmolLM2)."""
ANSWER_WEIGHT = 1.0
"""A practice window's loss is its mean NLL over all next tokens + ANSWER_WEIGHT × its mean NLL over the
answer's tokens. Provisional: unmeasured until the GPU runs of issue 12 compare values."""
MIN_TEXT_TOKENS = 32
"""Text a practice window keeps at the least (the shortest allowed --train-length includes it), so the
needles are hidden in text rather than stacked on each other."""

NEEDLE_TEXT = " Remember this: the code for {word} is {number}."
QUESTION_TEXT = " What is the code for {word}? The code for {word} is"
ANSWER_TEXT = " {number}."
_NUMBERS = (100_000, 1_000_000)
"""6-digit numbers, [low, high)."""
_PROBED_WORDS = 50
"""Words (those that tokenise longest alone) whose sentences `NeedlePlan.shortest_length` measures."""
_STREAM = 2
"""Generator stream of the practice choices: (seed, 2, window); the packing uses (seed, epoch) and
`PositionPlan` (seed, 1, window)."""


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


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class Practice:
    """What one practice window holds (besides its text)."""

    words: tuple[str, ...]
    numbers: tuple[int, ...]
    asked: int
    """Index of the needle the question asks about."""
    depths: tuple[float, ...]
    """Needle i's depth in the window's remaining text, in ((i + 0.05) / K, (i + 0.95) / K)."""
    needle_starts: tuple[int, ...]
    """Index in the window of each needle's first token."""
    answer_tokens: int
    """The answer's tokens end the window."""


@dataclass(frozen=True)
class NeedlePlan:
    """Which training windows carry retrieval practice, and the practice they carry."""

    length: int
    share: float = 0.0
    seed: int = 0
    tokenizer: Any = field(default=None, compare=False, repr=False)

    @property
    def active(self) -> bool:
        return self.share > 0

    def _rng(self, sample: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _STREAM, sample])

    def carries(self, sample: int) -> bool:
        """Whether window ``sample`` carries retrieval practice."""
        return self.share > 0 and bool(self._rng(sample).random() < self.share)

    def shortest_length(self) -> int:
        """The shortest train length that holds the needles, question, answer and `MIN_TEXT_TOKENS` of text.

        Measured with this tokenizer on the words that tokenise longest alone and the numbers' extremes: a
        sentence's length follows its word's, and the margin of text absorbs a token more or less.
        """
        words = list(practice_words())
        alone = _encode(self.tokenizer, [f" {w}" for w in words])
        longest = [w for _, w in sorted(zip(map(len, alone), words, strict=True), reverse=True)[:_PROBED_WORDS]]
        numbers = [_NUMBERS[0], _NUMBERS[1] - 1, 123_456, 987_654, 505_050]

        def most(texts: list[str]) -> int:
            return max(map(len, _encode(self.tokenizer, texts)))

        needle = most([NEEDLE_TEXT.format(word=w, number=n) for w in longest for n in numbers])
        question = most([QUESTION_TEXT.format(word=w) for w in longest])
        answer = most([ANSWER_TEXT.format(number=n) for n in numbers])
        return NEEDLES * needle + question + answer + MIN_TEXT_TOKENS

    def check_length(self) -> None:
        """Refuse a train length too short for practice windows, naming the shortest that works."""
        if not self.active:
            return
        shortest = self.shortest_length()
        if self.length < shortest:
            raise RopextError(
                f"--needle-share needs --train-length of at least {shortest} tokens with this tokenizer "
                f"({NEEDLES} needles, the question and the answer, and {MIN_TEXT_TOKENS} tokens of text); "
                f"got {self.length}"
            )

    def insert(self, window: np.ndarray, sample: int) -> tuple[np.ndarray, Practice]:
        """Window ``sample``'s tokens with practice inserted (same length, int64), and what it holds.

        The text keeps its first tokens (the rest is cut to make room); needle i goes in at depth
        ``depths[i]`` of that text, and the question and answer end the window.
        """
        rng = self._rng(sample)
        rng.random()  # the draw of `carries`
        picked = rng.choice(len(practice_words()), size=NEEDLES, replace=False)
        words = tuple(practice_words()[int(i)] for i in picked)
        numbers = tuple(int(n) for n in rng.integers(*_NUMBERS, size=NEEDLES))
        asked = int(rng.integers(NEEDLES))
        depths = tuple(float((i + 0.05 + 0.9 * rng.random()) / NEEDLES) for i in range(NEEDLES))
        needles = _encode(
            self.tokenizer, [NEEDLE_TEXT.format(word=w, number=n) for w, n in zip(words, numbers, strict=True)]
        )
        question, answer = _encode(
            self.tokenizer,
            [QUESTION_TEXT.format(word=words[asked]), ANSWER_TEXT.format(number=numbers[asked])],
        )
        room = self.length - sum(map(len, needles)) - len(question) - len(answer)
        if room < 1:  # check_length makes this unreachable for the words and numbers there are
            raise RopextError(
                f"a practice window of {self.length} tokens has no room for text (window {sample}); "
                "use a longer --train-length"
            )
        text = window[:room]
        pieces: list[np.ndarray] = []
        starts: list[int] = []
        begin, filled = 0, 0
        for depth, needle in zip(depths, needles, strict=True):
            at = round(depth * room)
            pieces.append(text[begin:at])
            filled += at - begin
            starts.append(filled)
            pieces.append(np.asarray(needle, dtype=np.int64))
            filled += len(needle)
            begin = at
        pieces += [text[begin:], np.asarray(question + answer, dtype=np.int64)]
        ids = np.concatenate(pieces).astype(np.int64)
        assert len(ids) == self.length, (len(ids), self.length)
        return ids, Practice(words, numbers, asked, depths, tuple(starts), len(answer))

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
