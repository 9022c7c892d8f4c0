"""Corpora from real files (read through `datasets`), the built-in python-stdlib, and the token cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from integration_support import CorpusFiles

from ropext.data.corpus import BUILTIN_STDLIB, Corpus, open_corpus
from ropext.data.tokenized import encode, tokenize_corpus
from ropext.errors import RopextError


def _read(spec: str | Path) -> list[str]:
    return list(open_corpus(str(spec)).read())


def _never_read() -> Iterator[str]:
    raise AssertionError("the corpus was read again instead of coming from the token cache")


def test_txt_folder_is_one_document_per_file_in_name_order(corpus_files: CorpusFiles) -> None:
    corpus = open_corpus(str(corpus_files.folder))
    assert list(corpus.read()) == list(corpus_files.texts)
    assert list(corpus.read()) == list(corpus_files.texts)  # a second pass gives the same order


@pytest.mark.parametrize("kind", ["jsonl", "jsonl_gz"])
def test_jsonl_records_are_documents_in_file_order(kind: str, corpus_files: CorpusFiles) -> None:
    path: Path = getattr(corpus_files, kind)
    assert _read(path) == list(corpus_files.texts)
    assert _read(path.parent) == list(corpus_files.texts)  # the folder holding the file reads the same


def test_parquet_text_column_is_read_in_row_order(corpus_files: CorpusFiles, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    titles = [f"title {i}" for i in range(len(corpus_files.texts))]
    pq.write_table(pa.table({"title": titles, "text": list(corpus_files.texts)}), path)
    assert _read(path) == list(corpus_files.texts)


def test_mixed_folder_reads_every_document_in_a_stable_order(corpus_files: CorpusFiles, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "first record"}) + "\n")
    (folder / "b.txt").write_text(corpus_files.texts[1])
    (folder / "notes.md").write_text("not a corpus file, ignored")
    texts = _read(folder)
    assert sorted(texts) == sorted(["first record", corpus_files.texts[1]])
    assert _read(folder) == texts


def test_fingerprint_is_stable_and_follows_the_files(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("some text")
    first, again = open_corpus(str(path)), open_corpus(str(path))
    assert first.fingerprint == again.fingerprint
    path.write_text("some other text")
    assert open_corpus(str(path)).fingerprint != first.fingerprint


@pytest.mark.parametrize("name", ["missing.jsonl", "missing-folder/", "missing"])
def test_missing_path_is_an_error(name: str, tmp_path: Path) -> None:
    spec = str(tmp_path / name)
    with pytest.raises(RopextError, match="does not exist"):
        open_corpus(spec)


def test_folder_without_corpus_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("nothing to read")
    with pytest.raises(RopextError, match="holds no"):
        open_corpus(str(tmp_path))


def test_jsonl_without_text_field_names_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"content": "a document", "source": "x"}) + "\n")
    corpus = open_corpus(str(path))
    with pytest.raises(RopextError) as raised:
        list(corpus.read())
    message = str(raised.value)
    assert "'text'" in message
    assert "content" in message and "source" in message


def test_tokenize_corpus_encodes_once_then_reads_the_cache(
    tiny_tokenizer, corpus_files: CorpusFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROPEXT_CACHE_DIR", str(tmp_path / "cache"))
    corpus = open_corpus(str(corpus_files.jsonl))
    first = tokenize_corpus(tiny_tokenizer, corpus)
    assert len(first) == len(corpus_files.texts)
    for index, text in enumerate(corpus_files.texts):
        expected = tiny_tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        assert first.document(index).tolist() == expected == encode(tiny_tokenizer, text)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npy"))) == 2

    cached = tokenize_corpus(tiny_tokenizer, Corpus(corpus.name, corpus.fingerprint, _never_read))
    np.testing.assert_array_equal(cached.ids, first.ids)
    np.testing.assert_array_equal(cached.offsets, first.offsets)
    with pytest.raises(AssertionError, match="read again"):  # another fingerprint is another corpus
        tokenize_corpus(tiny_tokenizer, Corpus(corpus.name, "another-fingerprint", _never_read))


def test_python_stdlib_has_many_long_documents_and_a_stable_fingerprint() -> None:
    first, again = open_corpus(BUILTIN_STDLIB), open_corpus(BUILTIN_STDLIB)
    assert first.fingerprint == again.fingerprint
    documents = list(first.read())
    assert len(documents) >= 20
    assert all(len(document) > 10_000 for document in documents)
    assert [len(document) for document in again.read()] == [len(document) for document in documents]
