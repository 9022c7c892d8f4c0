"""Search objectives, registered by name (``ropext search --objective NAME``; ``ropext ls`` lists them).

An objective decides which windows the engine scores and which of their tokens count:

- ``ppl``: every next token of the first ``length`` tokens of each document (the perplexity objective).
- ``needle``: only the answer tokens of a needle, a random 7-digit number stated once in a real
  document at a seeded, stratified depth and asked for at the end of the window.

An objective is an object with ``name``, ``provenance_name`` and
``windows(tokenizer, request, length) -> ObjectiveWindows``; plugins register more on ``OBJECTIVES``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ropext.data.corpus import open_corpus
from ropext.data.tokenized import special_prefix, tokenize_corpus
from ropext.errors import RopextError
from ropext.registry import Registry

DEFAULT_OBJECTIVE = "ppl"


@dataclass(frozen=True)
class ObjectiveWindows:
    ids: torch.Tensor
    """[count, length] token ids, every row exactly the window length."""
    answer_lengths: tuple[int, ...] | None = None
    """Per row, how many trailing tokens are scored; None scores every next token (perplexity)."""
    mix_weight: float | None = None
    """With answer_lengths: the answers' share of the score, the rest being every token's (``mix``)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the provenance records about the windows (e.g. the needles' depths)."""


def search_windows(tokenizer: Any, request: Any, length: int) -> torch.Tensor:
    """The tokenizer's leading special tokens (`special_prefix`), then the first tokens of ``samples`` documents
    at least ``length`` long (after skip_docs), ``length`` tokens in all."""
    corpus = tokenize_corpus(tokenizer, open_corpus(request.corpus))
    documents = corpus.require(length, what="search")[request.skip_docs :]
    if len(documents) < request.samples:
        raise RopextError(
            f"corpus {request.corpus} has {len(documents)} documents of {length}+ tokens after skipping "
            f"{request.skip_docs}; the search needs --samples {request.samples}: lower --samples or add documents"
        )
    prefix = special_prefix(tokenizer)
    text = length - len(prefix)
    rows = [prefix + corpus.document(d)[:text].astype("int64").tolist() for d in documents[: request.samples]]
    return torch.tensor(rows, dtype=torch.int64)


class Perplexity:
    name = "ppl"
    provenance_name = "perplexity"  # the YAML key written before objectives existed

    def windows(self, tokenizer: Any, request: Any, length: int) -> ObjectiveWindows:
        return ObjectiveWindows(search_windows(tokenizer, request, length))


NEEDLE_TEXT = " The special magic number is {number}. "
QUESTION_TEXT = (
    " What is the special magic number mentioned in the text? The special magic number mentioned in the text is"
)
ANSWER_TEXT = " {number}"


class Needle:
    name = "needle"
    provenance_name = "needle"

    def windows(self, tokenizer: Any, request: Any, length: int) -> ObjectiveWindows:
        documents = search_windows(tokenizer, request, length)
        return needle_windows(tokenizer, documents, request.seed)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def needle_depths(count: int, rng: random.Random) -> list[float]:
    """One depth per window, stratified: window i lies in ((i + 0.05) / count, (i + 0.95) / count), so the
    depths spread over (0, 1) and never touch the ends."""
    return [(i + 0.05 + 0.9 * rng.random()) / count for i in range(count)]


def needle_windows(tokenizer: Any, documents: torch.Tensor, seed: int) -> ObjectiveWindows:
    """Each document's first tokens with a needle inserted at its depth, then the question and the answer;
    every row keeps the documents' length, and the answer's tokens end it. The rows of ``documents`` start
    with the tokenizer's leading special tokens (`search_windows`), which stay first."""
    count, length = documents.shape
    lead = len(special_prefix(tokenizer))
    rng = random.Random(f"needle:{seed}")  # seeded apart from the searcher's own random stream
    depths = needle_depths(count, rng)
    rows, answers, positions = [], [], []
    question = _encode(tokenizer, QUESTION_TEXT)
    for row, depth in enumerate(depths):
        number = rng.randrange(1_000_000, 10_000_000)
        needle = _encode(tokenizer, NEEDLE_TEXT.format(number=number))
        answer = _encode(tokenizer, ANSWER_TEXT.format(number=number))
        room = length - lead - len(needle) - len(question) - len(answer)
        if room < 1:
            raise RopextError(
                f"a needle window of {length} tokens has no room for text around the needle "
                f"({len(needle) + len(question) + len(answer)} tokens): search a longer target length"
            )
        prefix, hay = documents[row, :lead].tolist(), documents[row, lead : lead + room].tolist()
        at = round(depth * room)
        rows.append(prefix + hay[:at] + needle + hay[at:] + question + answer)
        answers.append(len(answer))
        positions.append(lead + at)
    ids = torch.tensor(rows, dtype=torch.int64)
    details = {"depths": [round(d, 4) for d in depths], "needle_positions": positions}
    return ObjectiveWindows(ids, tuple(answers), details=details)


MIX_WEIGHT = 0.5
"""The needle's share of the ``mix`` objective: provisional, awaiting GPU measurement."""


class Mix:
    """exp(½ · mean NLL of every token + ½ · mean NLL of the answers), on the needle windows."""

    name = "mix"
    provenance_name = "mix"

    def windows(self, tokenizer: Any, request: Any, length: int) -> ObjectiveWindows:
        needle = Needle().windows(tokenizer, request, length)
        details = needle.details | {"needle_weight": MIX_WEIGHT}
        return replace(needle, mix_weight=MIX_WEIGHT, details=details)


OBJECTIVES: Registry = Registry("objective")
OBJECTIVES.register("ppl", Perplexity(), "perplexity of every token of the search windows", aliases=("perplexity",))
OBJECTIVES.register("needle", Needle(), "perplexity of the answer of a 7-digit needle at a seeded, stratified depth")
OBJECTIVES.register("mix", Mix(), "geometric mean of ppl and needle on the needle windows (provisional)")
