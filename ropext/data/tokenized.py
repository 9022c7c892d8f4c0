"""Tokenised documents, cached on disk by (tokenizer, corpus) so a corpus is tokenised once."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ropext.data.corpus import Corpus
from ropext.errors import RopextError
from ropext.paths import cache_dir

CACHE_VERSION = 1


@dataclass(frozen=True)
class TokenizedCorpus:
    """All documents' token ids in one array; document k is ``ids[offsets[k]:offsets[k+1]]``."""

    name: str
    ids: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def document(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def documents_at_least(self, length: int) -> list[int]:
        """Indices of the documents with at least ``length`` tokens, in corpus order."""
        return [int(i) for i in np.nonzero(self.lengths() >= length)[0]]

    def require(self, length: int, what: str = "evaluate") -> list[int]:
        """Like `documents_at_least`, but a corpus that cannot serve ``length`` is a clear error."""
        found = self.documents_at_least(length)
        if not found:
            longest = int(self.lengths().max()) if len(self) else 0
            raise RopextError(
                f"no document in corpus {self.name} has {length} tokens to {what} at that length "
                f"(longest: {longest}); choose shorter lengths or a corpus of longer documents"
            )
        return found


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer by its full serialised state, not its name (GGUF and HF copies agree)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids without special tokens; the fast backend directly, which skips transformers' warning
    about texts longer than the model's nominal maximum (long texts are the point here)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text: ``[bos]`` for Llama and Gemma, ``[]`` for SmolLM2 and
    many others. Every input ropext builds from text (perplexity windows, search windows, passkey and RULER
    prompts, training windows) starts with them, as the model saw text in training; Gemma 3 270M without ``<bos>``
    scores 55.56 instead of 35.5 at 1k on the books (docs/decisions.md, "Perplexity")."""
    plain = encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def tokenize_corpus(tokenizer: Any, corpus: Corpus, progress: Any = None) -> TokenizedCorpus:
    """Token ids of every document (no special tokens added), from the cache when present."""
    key = f"v{CACHE_VERSION}-{tokenizer_fingerprint(tokenizer)}-{corpus.fingerprint}"
    folder = cache_dir() / "tokens"
    ids_path, offsets_path = folder / f"{key}.ids.npy", folder / f"{key}.offsets.npy"
    if ids_path.is_file() and offsets_path.is_file():
        return TokenizedCorpus(corpus.name, np.load(ids_path, mmap_mode="r"), np.load(offsets_path))

    pieces: list[np.ndarray] = []
    for text in corpus.read():
        pieces.append(np.asarray(encode(tokenizer, text), dtype=np.uint32))
        if progress is not None:
            progress(len(pieces))
    if not pieces:
        raise RopextError(f"corpus {corpus.name} holds no documents")
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    ids = np.concatenate(pieces)
    folder.mkdir(parents=True, exist_ok=True)
    # Write under temporary names, then rename: an interrupted run never leaves a truncated cache.
    for path, array in ((ids_path, ids), (offsets_path, offsets)):
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, path)
    return TokenizedCorpus(corpus.name, ids, offsets)
