"""The GGUF tokenizer check: a converted tokenizer must put the <bos> token first when the GGUF file asks for it.

The GGUF files here hold only tokenizer metadata (written with the gguf package), the tokenizers are built in
memory: no download, no model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFWriter
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ropext.errors import RopextError
from ropext.model.gguf_tokenizer import PROBE_TEXT, gguf_bos_token, require_gguf_bos

BOS = 2
WORDS = PROBE_TEXT.split()


def _gguf(path: Path, add_bos: bool | None) -> Path:
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_bos_token_id(BOS)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tokenizer(with_bos: bool) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": BOS, "<unk>": 3} | {w: 4 + i for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if with_bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", unk_token="<unk>")


def test_the_bos_token_is_read_from_the_metadata(tmp_path: Path) -> None:
    assert gguf_bos_token(_gguf(tmp_path / "a.gguf", add_bos=True)) == BOS
    assert gguf_bos_token(_gguf(tmp_path / "b.gguf", add_bos=False)) is None
    assert gguf_bos_token(_gguf(tmp_path / "c.gguf", add_bos=None)) is None


def test_a_tokenizer_without_the_bos_the_file_asks_for_is_refused(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "gemma.gguf", add_bos=True)
    with pytest.raises(RopextError, match=r"without the <bos> token \(id 2\).*pip install 'transformers>=5.23'"):
        require_gguf_bos(path, _tokenizer(with_bos=False))
    require_gguf_bos(path, _tokenizer(with_bos=True))


def test_a_file_without_bos_accepts_either_tokenizer(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "smollm2.gguf", add_bos=False)
    require_gguf_bos(path, _tokenizer(with_bos=False))
    require_gguf_bos(path, _tokenizer(with_bos=True))
