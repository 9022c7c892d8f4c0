"""Perplexity on long documents: exp(total NLL / total predicted tokens) per length.

Two modes. ``truncate`` (as in the LongRoPE and DCIS searches): the first L tokens of each document,
one window per document. ``sliding``: windows of L tokens moved by a stride over whole documents;
each token is scored once, by the first window that predicts it (so after the first window every
scored token sees at least L − stride tokens of context).

The same documents serve every length (those at least as long as the longest length requested),
so a perplexity curve over lengths reflects the lengths, not a change of documents.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ropext.data.corpus import open_corpus
from ropext.data.tokenized import TokenizedCorpus, special_prefix, tokenize_corpus
from ropext.errors import RopextError
from ropext.evaluate.nll import DEFAULT_CHUNK_TOKENS, summed_nll
from ropext.evaluate.progress import Tracker
from ropext.evaluate.task import Task
from ropext.lengths import format_length, parse_length
from ropext.model.prepared import PreparedModel


@dataclass(frozen=True)
class PerplexityOptions:
    corpus: str
    """Corpus spec: files or folder, hub dataset, or ``python-stdlib``."""
    lengths: tuple[int, ...]
    """Window lengths in tokens."""
    max_docs: int = 10
    """Use at most this many documents (the first ones, in corpus order, that are long enough)."""
    skip_docs: int = 0
    """Skip this many qualifying documents first (e.g. those a search used)."""
    mode: str = "truncate"
    """``truncate``: first L tokens per document; ``sliding``: windows over whole documents."""
    stride: int | None = None
    """Sliding mode: tokens between window starts (default L/2)."""
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    """Positions per chunk of the vocabulary projection and loss."""


@dataclass(frozen=True)
class Window:
    document: int
    start: int
    stop: int
    score_from: int
    """Index within the window of the first hidden state whose next token is scored."""


MODES = ("truncate", "sliding")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of `MODES`; else the error that names them."""
    if mode not in MODES:
        raise RopextError(f"unknown --mode {mode!r}; use {' or '.join(MODES)}")
    return mode


def select_documents(corpus: TokenizedCorpus, options: PerplexityOptions) -> list[int]:
    check_mode(options.mode)
    if options.skip_docs < 0:
        raise RopextError(f"--skip-docs must be 0 or more, got {options.skip_docs}")
    if options.max_docs < 1:
        raise RopextError(f"--max-docs must be at least 1, got {options.max_docs}")
    longest = max(options.lengths)
    if longest < 2:
        raise RopextError("lengths must be at least 2 tokens")
    candidates = corpus.require(longest)
    chosen = candidates[options.skip_docs : options.skip_docs + options.max_docs]
    if not chosen:
        raise RopextError(
            f"corpus {corpus.name} has {len(candidates)} documents of {longest}+ tokens, all skipped by "
            f"--skip-docs {options.skip_docs}; skip fewer or use a larger corpus"
        )
    return chosen


def windows_for(
    corpus: TokenizedCorpus, documents: list[int], length: int, options: PerplexityOptions, prefix: int = 0
) -> Iterator[Window]:
    """The text part of every window: ``length - prefix`` tokens, after the ``prefix`` special tokens."""
    text = length - prefix
    for doc in documents:
        size = len(corpus.document(doc))
        if options.mode == "truncate":
            yield Window(doc, 0, text, 0)
            continue
        stride = options.stride if options.stride is not None else max(1, length // 2)
        if not 0 < stride < text:
            after = " after its leading special tokens" if prefix else ""
            raise RopextError(
                f"--stride must be between 1 and {text - 1} (below a window's {text} tokens of text{after}), "
                f"got {stride}"
            )
        scored_until = 0  # global position of the last target scored so far
        start = 0
        while True:
            stop = min(start + text, size)
            begin = max(0, stop - text)  # every window is full length; the last one ends at the document's end
            # Score only targets after scored_until; stride < length guarantees an overlap, so
            # every target is scored exactly once.
            yield Window(doc, begin, stop, max(scored_until - begin, 0))
            scored_until = stop - 1
            if stop >= size:
                break
            start += stride


@dataclass
class LengthResult:
    length: int
    nll: float
    tokens: int
    docs: int
    windows: int
    seconds: float
    peak_memory_gb: float | None

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens)

    def to_dict(self) -> dict:
        return {
            "ppl": self.ppl,
            "nll": self.nll,
            "tokens": self.tokens,
            "docs": self.docs,
            "windows": self.windows,
            "seconds": self.seconds,
            "seconds_per_window": self.seconds / self.windows,
            "peak_memory_gb": self.peak_memory_gb,
        }


def perplexity_at(
    model: Any,
    corpus: TokenizedCorpus,
    documents: list[int],
    length: int,
    options: PerplexityOptions,
    device: str,
    on_window: Callable[[], None] | None = None,
    prefix: Sequence[int] = (),
) -> LengthResult:
    """``prefix``: the tokenizer's leading special tokens (`special_prefix`), put before every window's text.
    A document's first window then also scores its first token, predicted from them; later windows score
    what follows the previous one, as without a prefix."""
    windows = list(windows_for(corpus, documents, length, options, len(prefix)))
    lead = torch.tensor(list(prefix), dtype=torch.int64)
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    nll, tokens = 0.0, 0
    for window in windows:
        text = torch.from_numpy(corpus.document(window.document)[window.start : window.stop].astype("int64"))
        ids = torch.cat([lead, text])
        score_from = 0 if window.start == 0 else window.score_from + len(lead)
        total, count = summed_nll(model, ids[None].to(device), score_from, options.chunk_tokens)
        nll += float(total.sum())
        tokens += count
        if on_window is not None:
            on_window()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return LengthResult(length, nll, tokens, len(documents), len(windows), time.perf_counter() - began, peak)


def evaluate_perplexity(
    prepared: PreparedModel, options: PerplexityOptions, tracker: Tracker, done: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Perplexity at every length of ``options``; lengths already in ``done`` are not recomputed."""
    corpus_files = open_corpus(options.corpus)
    corpus = tokenize_corpus(prepared.tokenizer, corpus_files)
    documents = select_documents(corpus, options)
    # A finished length is reused only if it was measured on these very documents of this very corpus
    # (a rerun with a longer --lengths may select other documents).
    identity: dict[str, Any] = {"documents": documents, "corpus_fingerprint": corpus_files.fingerprint}
    prefix = special_prefix(prepared.tokenizer)
    if prefix:  # recorded where there is one, so results measured without it are not reused
        identity["leading_tokens"] = prefix
    results = {key: value for key, value in (done or {}).items() if all(value.get(k) == v for k, v in identity.items())}
    todo = [length for length in options.lengths if str(length) not in results]
    total = sum(len(list(windows_for(corpus, documents, length, options, len(prefix)))) for length in todo)
    tracker.begin(f"ppl {prepared.label}", total)
    for length in todo:
        result = perplexity_at(
            prepared.model,
            corpus,
            documents,
            length,
            options,
            prepared.device,
            on_window=lambda length=length: tracker.advance(f"ppl {prepared.label} @ {format_length(length)}"),
            prefix=prefix,
        )
        if not math.isfinite(result.nll):
            # Never write NaN or inf as a result; the lengths finished before this one are already saved.
            raise RopextError(
                f"perplexity at length {length} ({format_length(length)}) is not finite (total NLL {result.nll}): "
                "the model's outputs overflowed; check the scaling with `ropext inspect FILE` or evaluate with "
                "--dtype fp32 (results of lengths finished before it are kept)"
            )
        results[str(length)] = result.to_dict() | identity
        tracker.finished(str(length), results[str(length)])
    return {str(length): results[str(length)] for length in options.lengths}


def options_from_command_line(
    lengths: tuple[int, ...],
    *,
    corpus: str | None = None,
    max_docs: int = 10,
    skip_docs: int = 0,
    mode: str = "truncate",
    stride: str | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    **_other_tasks: Any,
) -> PerplexityOptions:
    """PerplexityOptions from command-line values; a bad mode or a missing corpus fails before any model loads."""
    if corpus is None:
        raise RopextError("task ppl needs --corpus (the long documents to score)")
    check_mode(mode)
    open_corpus(corpus)  # a missing corpus fails before the model is loaded
    return PerplexityOptions(
        corpus=corpus,
        lengths=lengths,
        max_docs=max_docs,
        skip_docs=skip_docs,
        mode=mode,
        stride=parse_length(stride, "--stride") if stride is not None else None,
        chunk_tokens=chunk_tokens,
    )


TASK = Task(
    name="ppl",
    run=evaluate_perplexity,
    options=options_from_command_line,
    columns=("ppl", "tokens", "docs", "seconds_per_window", "peak_memory_gb"),
    unit="window",
)
