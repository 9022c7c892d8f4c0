"""Training windows: tokenised documents concatenated with an end-of-sequence token between them and cut
into windows of exactly the train length.

Sample k of a run (k = 0, 1, 2, ... across optimizer steps, micro batches and processes) is a pure
function of the corpus, the seed and k, so a run resumes from one integer (the number of samples
consumed) and every process computes its own windows without communicating. Each epoch shuffles the
documents (which decides how they are packed) and the order of the windows, with a generator seeded by
(seed, epoch); a run longer than one epoch simply continues into the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ropext.data.tokenized import TokenizedCorpus
from ropext.errors import RopextError
from ropext.scaling import RopeScaling


def training_documents(corpus: TokenizedCorpus, skip_docs: int = 0, skip_length: int = 1) -> np.ndarray:
    """Indices of the documents to train on: all of them, or those after the first ``skip_docs`` documents
    of at least ``skip_length`` tokens (and every shorter document before them).

    ``ropext eval ppl --skip-docs S --max-docs D --lengths ...,L`` evaluates the D documents of at least L
    tokens that follow the first S such documents, so ``--skip-docs S+D --skip-length L`` here trains on
    none of them: the corpus prefix that holds them is skipped whole.
    """
    if skip_docs < 0:
        raise RopextError(f"--skip-docs must be 0 or more, got {skip_docs}")
    if skip_length < 1:
        raise RopextError(f"--skip-length must be at least 1 token, got {skip_length}")
    if skip_docs == 0:
        return np.arange(len(corpus), dtype=np.int64)
    counted = corpus.documents_at_least(skip_length)
    first = counted[skip_docs - 1] + 1 if len(counted) >= skip_docs else len(corpus)
    if first >= len(corpus):
        raise RopextError(
            f"--skip-docs {skip_docs} skips every document of corpus {corpus.name} ({len(counted)} documents of "
            f"{skip_length}+ tokens, {len(corpus)} in all); skip fewer or use a larger corpus"
        )
    return np.arange(first, len(corpus), dtype=np.int64)


@dataclass(frozen=True)
class _EpochPacking:
    order: np.ndarray
    """Documents in packing order."""
    ends: np.ndarray
    """End of each packed piece (document + separator) in the epoch's token stream."""
    windows: np.ndarray
    """Window order: the i-th sample of the epoch is stream window ``windows[i]``."""


@dataclass
class PackedWindows:
    """Deterministic training windows of ``length`` tokens over ``documents`` of ``corpus``."""

    corpus: TokenizedCorpus
    documents: np.ndarray
    length: int
    separator: int
    """Token put after every document (the tokenizer's eos), so the model sees where documents end."""
    seed: int = 0
    prefix: tuple[int, ...] = ()
    """The tokenizer's leading special tokens (`special_prefix`: ``<bos>`` for Gemma, none for SmolLM2), put
    before each window's text as the model saw text in training; the text fills the rest of the length."""
    _packings: dict[int, _EpochPacking] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.length < len(self.prefix) + 2:
            raise RopextError(f"--train-length must be at least {len(self.prefix) + 2} tokens, got {self.length}")
        lengths = self.corpus.lengths()[self.documents] if len(self.documents) else np.zeros(0, np.int64)
        self._piece_lengths = lengths.astype(np.int64) + 1

    @property
    def tokens_per_epoch(self) -> int:
        """Tokens of the training documents plus one separator each."""
        return int(self._piece_lengths.sum())

    @property
    def text_length(self) -> int:
        """Tokens of text per window: the length less the prefix."""
        return self.length - len(self.prefix)

    @property
    def windows_per_epoch(self) -> int:
        """Full windows per epoch (the stream's tail shorter than a window is left out)."""
        return self.tokens_per_epoch // self.text_length

    def _packing(self, epoch: int) -> _EpochPacking:
        packing = self._packings.get(epoch)
        if packing is None:
            rng = np.random.default_rng([self.seed, epoch])
            permutation = rng.permutation(len(self.documents))
            order = self.documents[permutation]
            ends = np.cumsum(self._piece_lengths[permutation])
            packing = _EpochPacking(order, ends, rng.permutation(self.windows_per_epoch))
            # Samples are read in order, so at most the current and the next epoch are ever needed.
            self._packings = {k: v for k, v in self._packings.items() if k >= epoch - 1}
            self._packings[epoch] = packing
        return packing

    def window(self, sample: int) -> np.ndarray:
        """Token ids (int64) of sample ``sample`` of the run."""
        if sample < 0:
            raise ValueError(f"sample index must be >= 0, got {sample}")
        per_epoch = self.windows_per_epoch
        if per_epoch == 0:
            raise RopextError("the corpus cannot fill a single training window")
        epoch, index = divmod(sample, per_epoch)
        packing = self._packing(epoch)
        text = self._stream(packing, int(packing.windows[index]) * self.text_length, self.text_length)
        return np.concatenate([np.asarray(self.prefix, dtype=np.int64), text]) if self.prefix else text

    def batch(self, first_sample: int, count: int) -> np.ndarray:
        """Samples ``first_sample .. first_sample + count - 1`` as one [count, length] int64 array."""
        return np.stack([self.window(first_sample + i) for i in range(count)])

    def _stream(self, packing: _EpochPacking, begin: int, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.int64)
        piece = int(np.searchsorted(packing.ends, begin, side="right"))
        offset = begin - (int(packing.ends[piece - 1]) if piece else 0)
        filled = 0
        while filled < size:
            document = self.corpus.document(int(packing.order[piece]))
            piece_length = len(document) + 1
            stop = min(piece_length, offset + size - filled)
            text = document[offset : min(stop, len(document))]
            out[filled : filled + len(text)] = text
            if stop == piece_length:  # this window reaches the document's end: its separator follows
                out[filled + len(text)] = self.separator
            filled += stop - offset
            piece, offset = piece + 1, 0
        return out


def check_fills(windows: PackedWindows, micro_batch: int, corpus_name: str, skip_docs: int) -> None:
    """A run needs at least one micro batch of full windows; say how short the corpus falls otherwise."""
    needed = windows.length * micro_batch
    if windows.tokens_per_epoch < needed:
        skipped = f" after --skip-docs {skip_docs}" if skip_docs else ""
        raise RopextError(
            f"corpus {corpus_name} has {windows.tokens_per_epoch} tokens in {len(windows.documents)} documents"
            f"{skipped}, fewer than one micro batch of {micro_batch} window(s) of {windows.length} tokens "
            f"({needed}); use a shorter --train-length, a smaller micro batch or a larger corpus"
        )


@dataclass(frozen=True)
class PositionPlan:
    """Position ids of training windows: PoSE position skipping and mixed short/long windows.

    Window k's positions are a pure function of (seed, k), like its tokens, so a resumed run sees the same.
    ``target`` None and ``short_share`` 0 give every window 0 .. length-1 (plain training).
    """

    length: int
    original: int
    """The model's original context length: positions below it make longrope use its short factors."""
    target: int | None = None
    """--position-skip: long windows' last position id is drawn from [max(length, original+1) - 1, target - 1]."""
    short_share: float = 0.0
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.target is not None or self.short_share > 0

    def _rng(self, sample: int) -> np.random.Generator:
        # A stream of its own (the 1 keeps it apart from the packing's (seed, epoch) generators).
        return np.random.default_rng([self.seed, 1, sample])

    def is_short(self, sample: int) -> bool:
        """Whether window ``sample`` trains at positions 0 .. length-1 (within the original length)."""
        return self.short_share > 0 and bool(self._rng(sample).random() < self.short_share)

    def positions(self, sample: int) -> np.ndarray:
        """Position ids (int64) of window ``sample``: two chunks, the second shifted by a random skip."""
        rng = self._rng(sample)
        short = self.short_share > 0 and bool(rng.random() < self.short_share)
        plain = np.arange(self.length, dtype=np.int64)
        if short or self.target is None:
            return plain
        # The last id reaches past the original length, so longrope's long factors serve the whole window.
        lowest_last = max(self.length, self.original + 1) - 1
        last = int(rng.integers(lowest_last, self.target))
        split = int(rng.integers(1, self.length))
        plain[split:] += last - (self.length - 1)
        return plain

    def batch(self, first_sample: int, count: int) -> np.ndarray:
        return np.stack([self.positions(first_sample + i) for i in range(count)])


def check_positions(length: int, original: int, target_length: int, target: int | None, short_share: float) -> None:
    """Refuse position settings that cannot be trained as asked, with the fix in the message."""
    if not 0 <= short_share < 1:
        raise RopextError(
            f"--short-share must be in [0, 1) (the share of windows at short positions), got {short_share}"
        )
    if target is None:
        if short_share > 0:
            raise RopextError(
                "--short-share needs --position-skip TARGET: the other windows are the long ones, stretched to TARGET"
            )
        return
    if target < length:
        raise RopextError(f"--position-skip {target} is below --train-length {length}; give a target of at least it")
    if target <= original:
        raise RopextError(
            f"--position-skip {target} is within the model's original length {original}; give a target above it"
        )
    if target > target_length:
        raise RopextError(
            f"--position-skip {target} is above the scaling's max_position_embeddings {target_length}; "
            f"give at most {target_length} or factors for a longer target"
        )
    if short_share > 0 and length > original:
        raise RopextError(
            f"--short-share trains windows at positions within the original length {original}, but --train-length "
            f"{length} is longer; use --train-length {original} or less"
        )


def with_short_regime(scaling: RopeScaling) -> RopeScaling:
    """The scaling mixed training trains and saves: its own short factors, else the original frequencies.

    Short windows must train with exactly what the saved model runs on inputs within the original
    length, and that is what transformers' ``longrope`` runs there: ``short_factor`` and the one
    ``attention_factor`` it has for both regimes. A scaling without short factors would run its long
    factors there, so mixed windows would teach nothing a plain run does not; it gets factors of 1 (the
    frequencies the model was pre-trained with), written into the saved ``rope_scaling.yaml`` and config.
    """
    if scaling.short_factors is not None or scaling.is_dynamic:  # dynamic NTK is the original within L0
        return scaling
    return replace(scaling, short_factors=(1.0,) * len(scaling.factors)).with_provenance(
        short_factors="original frequencies, set by finetune --short-share"
    )
