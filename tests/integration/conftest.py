"""Session fixtures: a tiny offline Llama with a real (in-memory trained) tokenizer, a config-only copy,
a tiny GPT-2 without RoPE, and a corpus of long deterministic documents in several file formats.

Nothing here touches the network; every test runs with ``ROPEXT_CACHE_DIR`` in a pytest tmp folder.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import (
    DOCUMENT_WORDS,
    HEAD_DIM,
    ORIGINAL_CONTEXT,
    ROPE_THETA,
    SPECIAL_TOKENS,
    TINY_VOCAB,
    CorpusFiles,
    pseudo_text,
)


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread() -> Iterator[None]:
    """The tiny model's matrices are small: one intra-op thread is fastest, and far steadier when other
    work shares the CPU (with two threads on a busy 2-core machine, a hundred tiny forward passes took
    30x longer). Subprocesses get the same through OMP_NUM_THREADS."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def ropext_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ropext cache per session; the hub is off limits (models and corpora here are local)."""
    cache = tmp_path_factory.mktemp("ropext-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROPEXT_CACHE_DIR", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("TOKENIZERS_PARALLELISM", "false")
        yield cache


def _tokenizer_training_text() -> list[str]:
    """A few KB of corpus-like text, plus the passkey sentences so that prompts tokenise compactly."""
    from ropext.evaluate.passkey import FILLER, NEEDLE, QUESTION, TASK_INTRO

    passkey = [TASK_INTRO, FILLER, NEEDLE.format(key=12345), QUESTION]
    return [pseudo_text(seed=1000, words=1200), *passkey * 10]


@pytest.fixture(scope="session")
def tiny_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tokenizer_training_text(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1]
    )
    assert len(tokenizer) == TINY_VOCAB
    return tokenizer


def _llama_config(tokenizer):  # -> transformers.LlamaConfig
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=ORIGINAL_CONTEXT,
        rope_theta=ROPE_THETA,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # Wider than the default 0.02, so attention is far from uniform and RoPE scaling visibly changes
        # the loss (at 0.02, YaRN moves the perplexity by 2e-5 relative, below the tests' tolerance).
        initializer_range=0.1,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A random 2-layer Llama (safetensors) and its tokenizer in one folder."""
    import torch
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(tiny_tokenizer)).eval()
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    assert any(folder.glob("*.safetensors"))
    return folder


@pytest.fixture(scope="session")
def config_only_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """The tiny Llama's config.json alone: enough for `ropext search`, not for evaluation."""
    folder = tmp_path_factory.mktemp("tiny-llama-config")
    _llama_config(tiny_tokenizer).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    return folder


@pytest.fixture(scope="session")
def gpt2_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A tiny GPT-2: learned absolute positions, no RoPE."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tiny_tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=ORIGINAL_CONTEXT,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> CorpusFiles:
    root = tmp_path_factory.mktemp("corpus")
    texts = tuple(pseudo_text(seed=i, words=words) for i, words in enumerate(DOCUMENT_WORDS))
    folder = root / "documents"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"doc_{i:02d}.txt").write_text(text)
    lines = "".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(texts))
    jsonl = root / "jsonl" / "records.jsonl"
    jsonl_gz = root / "jsonl-gz" / "records.jsonl.gz"
    for path in (jsonl, jsonl_gz):
        path.parent.mkdir()
    jsonl.write_text(lines)
    jsonl_gz.write_bytes(gzip.compress(lines.encode()))
    return CorpusFiles(folder, jsonl, jsonl_gz, texts)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the slow tests keep SmolLM2 (downloaded once); ``ROPEXT_TEST_MODEL_CACHE`` reuses a download."""
    reused = os.environ.get("ROPEXT_TEST_MODEL_CACHE")
    if reused:
        path = Path(reused)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("smollm2-cache")


@pytest.fixture(scope="module")
def pristine(tiny_model: Path):  # -> transformers.LlamaForCausalLM
    """The tiny Llama as transformers loads it (float32, CPU, SDPA); tests that change it use deep copies."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def layout(pristine, tiny_model: Path):  # -> ropext.model.layout.RotaryLayout
    from ropext.model.layout import read_layout

    return read_layout(pristine.config, name=str(tiny_model))
