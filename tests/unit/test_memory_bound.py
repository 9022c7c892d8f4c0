"""The lower bound of one window's memory counts the length x length tensors an attention implementation
builds: eager's scores and masks, sdpa's sliding-window mask, and nothing for ropext_sdpa."""

from __future__ import annotations

import pytest
import torch
from test_gemma3 import _config
from transformers import LlamaConfig

from ropext.errors import RopextError
from ropext.model import memory
from ropext.model.memory import attention_bytes_per_square, check_lengths_fit, largest_window, window_bytes

LLAMA = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def test_square_term_per_implementation() -> None:
    gemma = _config()
    assert attention_bytes_per_square(gemma, 4, "sdpa") == 1  # the boolean [1, 1, L, L] sliding mask
    assert attention_bytes_per_square(gemma, 4, "ropext_sdpa") == 0
    assert attention_bytes_per_square(gemma, 4, "eager") == 4 * (4 + 2)  # 4 heads' scores, 2 float masks
    assert attention_bytes_per_square(LLAMA, 2, "sdpa") == 0  # is_causal, no mask
    assert attention_bytes_per_square(LLAMA, 2, "eager") == 2 * (4 + 1)
    assert attention_bytes_per_square(LLAMA, 2, "flash_attention_2") == 0


@pytest.mark.parametrize("total", [10**6, 10**9 + 7, 2**47, 3 * 2**50])
@pytest.mark.parametrize(("per_token", "per_square"), [(4096, 0), (4096, 1), (1000, 24), (7, 3)])
def test_largest_window_is_the_last_that_fits(total: int, per_token: int, per_square: int) -> None:
    largest = largest_window(total, per_token, per_square)
    assert window_bytes(largest, per_token, per_square) <= total < window_bytes(largest + 1, per_token, per_square)


def test_a_length_that_only_eager_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 64k tokens the tiny Gemma 3's cache and activations take megabytes, eager's scores and masks 96 GiB."""
    monkeypatch.setattr(memory, "device_memory", lambda device: 2**30)
    gemma = _config()
    check_lengths_fit([65536], gemma, "cpu", torch.float32)  # sdpa is loaded as ropext_sdpa: no square term
    with pytest.raises(RopextError, match=r"--lengths 65536: .*attention's L x L tensors.* lengths up to about"):
        check_lengths_fit([65536], gemma, "cpu", torch.float32, attn_implementation="eager")
    with pytest.raises(RopextError, match="lengths up to about 6k fit"):
        check_lengths_fit([65536], gemma, "cpu", torch.float32, attn_implementation="eager")
