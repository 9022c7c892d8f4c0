"""Checking the tokenizer transformers builds from a GGUF file against the file's own tokenizer metadata.

transformers 5.17 to 5.22 build Gemma 3's GGUF tokenizer without the ``<bos>`` token the file asks for
(``tokenizer.ggml.add_bos_token``), and 5.17 also as a unigram model instead of BPE. Gemma never saw text
without ``<bos>``: on the books its perplexity at 8k was 2,370 instead of about 33 (docs/decisions.md). A
converted folder is cached and reused, so the check runs before anything is converted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ropext.errors import RopextError

PROBE_TEXT = "It was the best of times"


def gguf_bos_token(path: Path) -> int | None:
    """The token id the GGUF's tokenizer puts before every text, or None when it puts none."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    add_bos = reader.get_field("tokenizer.ggml.add_bos_token")
    bos = reader.get_field("tokenizer.ggml.bos_token_id")
    if add_bos is None or bos is None or not add_bos.contents():
        return None
    return int(bos.contents())


def require_gguf_bos(path: Path, tokenizer: Any) -> None:
    """Refuse a tokenizer that drops the ``<bos>`` token the GGUF file asks for."""
    import transformers

    bos = gguf_bos_token(path)
    if bos is None:
        return
    first = tokenizer(PROBE_TEXT)["input_ids"][:1]
    if first != [bos]:
        raise RopextError(
            f"transformers {transformers.__version__} reads the tokenizer of {path.name} without the <bos> token "
            f"(id {bos}) that the file puts before every text, and the model would score text it was never trained "
            "on; upgrade transformers: pip install 'transformers>=5.23'"
        )
