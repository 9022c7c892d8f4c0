"""What every retrieval-practice window must hold, whatever its kind (`ropext/train/needles.py`): shared by
the tests of `--needle-share` and of `--practice`."""

from __future__ import annotations

import re

import numpy as np

from ropext.train.needles import (
    MIN_TEXT_TOKENS,
    MULTI_QUERY,
    MULTI_QUERY_QUESTION_TEXT,
    MULTI_VALUE,
    MULTI_VALUE_NEEDLE_TEXT,
    MULTI_VALUE_QUESTION_TEXT,
    NEEDLE_TEXT,
    QUESTION_TEXT,
    SINGLE,
    NeedlePlan,
    Practice,
    answer_text,
)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _needle_text(kind: str) -> str:
    return MULTI_VALUE_NEEDLE_TEXT if kind == MULTI_VALUE else NEEDLE_TEXT


def _question(practice: Practice) -> str:
    asked = [practice.words[i] for i in practice.asked]
    if practice.kind == SINGLE:
        return QUESTION_TEXT.format(word=asked[0])
    if practice.kind == MULTI_QUERY:
        return MULTI_QUERY_QUESTION_TEXT.format(first=asked[0], second=asked[1])
    return MULTI_VALUE_QUESTION_TEXT.format(word=asked[0])


def check_practice_window(plan: NeedlePlan, window: np.ndarray, sample: int, tokenizer) -> Practice:
    """Length kept, the window's own text in order with each needle at its depth, the question and the answer
    at the end, and a mask over exactly the answer's tokens; returns what the window holds."""
    ids, mask = plan.batch(window[None], sample)
    ids, mask = ids[0], mask[0]
    again, practice = plan.insert(window, sample)
    np.testing.assert_array_equal(ids, again)
    assert ids.dtype == np.int64 and ids.shape == (plan.length,)
    count = len(practice.words)
    needles = [_encode(tokenizer, _needle_text(practice.kind).format(word=w, number=n))
               for w, n in zip(practice.words, practice.numbers, strict=True)]  # fmt: skip
    question = _encode(tokenizer, _question(practice))
    answer = _encode(tokenizer, answer_text([practice.numbers[i] for i in practice.asked]))
    room = plan.length - sum(map(len, needles)) - len(question) - len(answer)
    assert room >= MIN_TEXT_TOKENS
    text, begin = [], 0
    for i, (start, needle) in enumerate(zip(practice.needle_starts, needles, strict=True)):
        assert (i + 0.05) / count <= practice.depths[i] <= (i + 0.95) / count
        at = round(practice.depths[i] * room)
        assert start == at + sum(map(len, needles[:i]))
        assert list(ids[start : start + len(needle)]) == needle
        text += list(ids[start - (at - begin) : start])
        begin = at
    text += list(ids[practice.needle_starts[-1] + len(needles[-1]) : plan.length - len(question) - len(answer)])
    assert text == list(window[:room])
    end = plan.length - len(answer)
    assert list(ids[end - len(question) : end]) == question
    # the mask: the answer's tokens and nothing else, which decode to the asked numbers and their glue only
    assert practice.answer_tokens == len(answer) and np.flatnonzero(mask).tolist() == list(range(end, plan.length))
    said = tokenizer.decode(ids[mask])
    numbers = [int(n) for n in re.findall(r"\d+", said)]
    assert numbers == [practice.numbers[i] for i in practice.asked], said
    assert re.sub(r"\d+", "N", said) in {" N.", " N and N.", " N, N and N."}, said
    assert tokenizer.decode(ids[end - len(question) : end]) == _question(practice)
    return practice
