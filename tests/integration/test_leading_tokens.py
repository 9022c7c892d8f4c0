"""Inputs built from text start with the tokenizer's own leading special tokens (a ``<bos>`` where it puts one,
as Gemma's and Llama's do): perplexity windows, search windows (both objectives) and passkey prompts, each at
the length asked for. A tokenizer without them (the tiny fixture, SmolLM2) gets exactly the inputs it got
before. Checked against transformers' own loss on the tiny Llama, saved with a tokenizer that adds ``<bos>``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from integration_support import CorpusFiles, assert_close, assert_ok, read_json, run_cli

from ropext.data.tokenized import special_prefix
from ropext.evaluate.passkey import build_prompt
from ropext.search.objectives import needle_windows, search_windows

LENGTHS = (128, 256)
MAX_DOCS = 2


def _with_bos(tokenizer: Any) -> Any:
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    bos = tokenizer.bos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=tokenizer.eos_token)


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer: Any) -> Any:
    return _with_bos(tiny_tokenizer)


@pytest.fixture(scope="module")
def bos_model(tiny_model: Path, bos_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama's weights with a tokenizer that puts <bos> before every text."""
    folder = tmp_path_factory.mktemp("tiny-llama-bos")
    for item in tiny_model.iterdir():
        if item.name.startswith(("config", "generation", "model")):
            shutil.copy(item, folder / item.name)
    bos_tokenizer.save_pretrained(folder)
    return folder


def test_the_prefix_is_what_the_tokenizer_puts_first(tiny_tokenizer: Any, bos_tokenizer: Any) -> None:
    assert special_prefix(bos_tokenizer) == [bos_tokenizer.bos_token_id]
    assert special_prefix(tiny_tokenizer) == []


@torch.no_grad()
def test_ppl_windows_start_with_bos_and_score_every_text_token(
    bos_model: Path, bos_tokenizer: Any, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    result = run_cli(
        "eval", "ppl", "--model", bos_model, "--corpus", corpus_files.folder, "--lengths", "128,256",
        "--max-docs", str(MAX_DOCS), "--json", tmp_path / "ppl.json", "--device", "cpu",
    )  # fmt: skip
    assert_ok(result)
    measured = read_json(tmp_path / "ppl.json")["results"]
    model = AutoModelForCausalLM.from_pretrained(bos_model, dtype=torch.float32).eval()
    backend = bos_tokenizer.backend_tokenizer
    docs = [backend.encode(text, add_special_tokens=False).ids for text in corpus_files.texts]
    docs = [doc for doc in docs if len(doc) >= max(LENGTHS)][:MAX_DOCS]
    bos = bos_tokenizer.bos_token_id
    for length in LENGTHS:
        # transformers' own loss over [<bos>] + the first length - 1 tokens: every text token is a target
        total = 0.0
        for doc in docs:
            ids = torch.tensor([[bos, *doc[: length - 1]]])
            total += model(input_ids=ids, labels=ids).loss.item() * (length - 1)
        row = measured[str(length)]
        assert row["tokens"] == MAX_DOCS * (length - 1)  # as many targets as without a prefix
        assert row["leading_tokens"] == [bos]
        assert_close(row["ppl"], math.exp(total / row["tokens"]))


def test_sliding_ppl_scores_each_text_token_once(
    bos_model: Path, bos_tokenizer: Any, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    result = run_cli(
        "eval", "ppl", "--model", bos_model, "--corpus", corpus_files.folder, "--lengths", "128",
        "--max-docs", "1", "--mode", "sliding", "--stride", "64", "--json", tmp_path / "ppl.json", "--device", "cpu",
    )  # fmt: skip
    assert_ok(result)
    row = read_json(tmp_path / "ppl.json")["results"]["128"]
    text = corpus_files.texts[row["documents"][0]]
    # the first token too, predicted from <bos>: one more than without a prefix
    assert row["tokens"] == len(bos_tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)


def test_search_windows_keep_the_length_with_bos_first(bos_tokenizer: Any, corpus_files: CorpusFiles) -> None:
    request = SimpleNamespace(corpus=str(corpus_files.folder), skip_docs=0, samples=2, seed=0)
    rows = search_windows(bos_tokenizer, request, 200)
    bos = bos_tokenizer.bos_token_id
    assert rows.shape == (2, 200)
    assert rows[:, 0].tolist() == [bos, bos]
    assert (rows[:, 1:] != bos).all()
    scored = needle_windows(bos_tokenizer, rows, seed=3)
    assert scored.ids.shape == (2, 200)
    assert scored.ids[:, 0].tolist() == [bos, bos]  # the needle never goes before <bos>
    assert all(position >= 1 for position in scored.details["needle_positions"])


def test_passkey_prompt_starts_with_bos_within_the_length(bos_tokenizer: Any) -> None:
    bos = bos_tokenizer.bos_token_id
    for length in (256, 512):
        for depth in (0.0, 0.5, 1.0):
            prompt = build_prompt(bos_tokenizer, length, depth, key=12345)
            assert prompt.ids[0] == bos and bos not in prompt.ids[1:]
            assert len(prompt.ids) <= length


def test_training_windows_put_the_prefix_before_the_same_stream() -> None:
    import numpy as np

    from ropext.data.tokenized import TokenizedCorpus
    from ropext.train.data import PackedWindows, training_documents

    lengths = [37, 5, 120, 64, 1, 90]
    pieces = [np.arange(n, dtype=np.uint32) + 1000 * d + 1 for d, n in enumerate(lengths)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    corpus = TokenizedCorpus("fake", np.concatenate(pieces), offsets)
    documents = training_documents(corpus)
    bos = 999_999
    plain = PackedWindows(corpus, documents, length=31, separator=0, seed=7)
    led = PackedWindows(corpus, documents, length=32, separator=0, seed=7, prefix=(bos,))
    # 31 tokens of text each way: the same packing and window order, with <bos> in front
    assert led.windows_per_epoch == plain.windows_per_epoch
    count = led.windows_per_epoch
    batch = led.batch(0, count)
    assert batch.shape == (count, 32)
    assert (batch[:, 0] == bos).all() and (batch[:, 1:] != bos).all()
    np.testing.assert_array_equal(batch[:, 1:], plain.batch(0, count))


def test_practice_keeps_bos_first(bos_tokenizer: Any, tiny_tokenizer: Any) -> None:
    import numpy as np

    from ropext.train.needles import NeedlePlan

    bos = bos_tokenizer.bos_token_id
    plan = NeedlePlan(512, share=1.0, seed=0, tokenizer=bos_tokenizer)
    assert plan.prefix == (bos,)
    window = np.concatenate([[bos], np.arange(10, 10 + 511)]).astype(np.int64)
    for sample in range(20):
        ids, practice = plan.insert(window, sample)
        assert len(ids) == 512 and ids[0] == bos and (ids[1:] != bos).all()
        assert min(practice.needle_starts) >= 1
    shorter = NeedlePlan(512, share=1.0, seed=0, tokenizer=tiny_tokenizer)
    assert plan.shortest_length() == shorter.shortest_length() + 1  # the prefix takes a token of the window


def test_a_search_journal_without_the_prefix_is_another_search(
    bos_model: Path, bos_tokenizer: Any, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    import json

    from integration_support import assert_clean_error

    out = tmp_path / "dcis.yaml"
    journal = out.with_name(out.name + ".journal.jsonl")

    def search() -> Any:
        return run_cli(
            "search", "--model", bos_model, "--method", "dcis", "-t", "1k", "--corpus", corpus_files.folder,
            "--samples", "2", "--param", "candidates=2", "--budget", "2", "--out", out,
        )  # fmt: skip

    assert_ok(search())
    header, *entries = journal.read_text().splitlines()
    assert json.loads(header)["search"]["leading_tokens"] == [bos_tokenizer.bos_token_id]
    # as a journal written before windows started with <bos>: its scores are of other windows
    old = json.loads(header)
    del old["search"]["leading_tokens"]
    journal.write_text("\n".join([json.dumps(old), *entries]) + "\n")
    out.unlink()
    assert_clean_error(search(), "different search", "leading_tokens")
    assert len(journal.read_text().splitlines()) == 1 + len(entries)  # nothing computed is lost


def test_a_stride_as_long_as_the_text_is_one_line_naming_the_limit(bos_model: Path, corpus_files: CorpusFiles) -> None:
    from integration_support import assert_clean_error

    result = run_cli(
        "eval", "ppl", "--model", bos_model, "--corpus", corpus_files.folder, "--lengths", "128",
        "--mode", "sliding", "--stride", "127", "--device", "cpu",
    )  # fmt: skip
    assert_clean_error(result, "--stride must be between 1 and 126", "127 tokens of text after its leading special")
