"""``ropext_sdpa``: sliding-window layers without a length x length mask, and the same logits as transformers'
``sdpa`` on a tiny random Gemma 3 (below, at and several times the window; with and without position ids,
padding or packed sequences; through ``generate`` and a key/value cache) and, bit for bit, on a plain Llama.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_gemma3 import WINDOW, _config, _model, _tokens
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from ropext.model import sliding_attention
from ropext.model.loading import load_model, resolve
from ropext.model.sliding_attention import NAME, attention_implementation, has_sliding_layers, windowed_sdpa

LENGTHS = (WINDOW - 5, WINDOW, WINDOW + 1, 5 * WINDOW + 3)


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Blocks smaller than the inputs (and not a divisor of them), so every path splits the queries."""
    sliding_attention.register()
    monkeypatch.setattr(sliding_attention, "BLOCK", 7)
    yield


@pytest.fixture(scope="module")
def gemma() -> Any:
    return _model()


def _logits(model: Any, implementation: str, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(ids, **kwargs).logits


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("with_positions", [False, True])
def test_gemma3_logits_equal_sdpa(gemma: Any, length: int, with_positions: bool) -> None:
    ids = _tokens(length)
    kwargs = {"position_ids": torch.arange(length)[None]} if with_positions else {}
    expected = _logits(gemma, "sdpa", ids, **kwargs)
    torch.testing.assert_close(_logits(gemma, NAME, ids, **kwargs), expected, rtol=1e-5, atol=1e-5)


def test_padding_and_packed_sequences_keep_transformers_masks(gemma: Any) -> None:
    """A padding mask or restarting position ids are transformers' own path: the same tensors, exactly."""
    length = 4 * WINDOW
    ids = torch.cat([_tokens(length), _tokens(length + 1)[:, 1:]])
    padding = torch.ones_like(ids)
    padding[1, :9] = 0  # left padding in the second row
    ours, theirs = (
        _logits(gemma, NAME, ids, attention_mask=padding),
        _logits(gemma, "sdpa", ids, attention_mask=padding),
    )
    assert torch.equal(ours, theirs)
    # transformers looks for packed sequences only without a cache
    packed = {"position_ids": torch.cat([torch.arange(length // 2), torch.arange(length - length // 2)])[None]}
    packed["use_cache"] = False
    assert torch.equal(_logits(gemma, NAME, ids[:1], **packed), _logits(gemma, "sdpa", ids[:1], **packed))


def test_generate_equals_sdpa(gemma: Any) -> None:
    """Greedy decoding with the key/value cache (sliding layers keep window - 1 keys): the same logits per step."""
    ids = _tokens(3 * WINDOW + 2)
    steps = {}
    for implementation in ("sdpa", NAME):
        gemma.set_attn_implementation(implementation)
        with torch.no_grad():
            steps[implementation] = gemma.generate(
                ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    assert torch.equal(steps[NAME].sequences, steps["sdpa"].sequences)
    for ours, theirs in zip(steps[NAME].logits, steps["sdpa"].logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefix", [WINDOW - 4, 3 * WINDOW])
def test_several_queries_after_a_cache_equal_sdpa(gemma: Any, prefix: int) -> None:
    """A few queries at once after a cached prefix: the queries are the last positions of the keys."""
    ids = _tokens(prefix + 3)
    results = {}
    for implementation in ("sdpa", NAME):
        gemma.set_attn_implementation(implementation)
        cache = DynamicCache(config=gemma.config)
        with torch.no_grad():
            gemma(ids[:, :prefix], cache=cache, use_cache=True)
            results[implementation] = gemma(ids[:, prefix:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(results[NAME], results["sdpa"], rtol=1e-5, atol=1e-5)


def test_llama_is_plain_sdpa_bit_for_bit() -> None:
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = _tokens(70)
    assert torch.equal(_logits(model, NAME, ids), _logits(model, "sdpa", ids))
    assert attention_implementation(config) == "sdpa"  # and ropext does not load it with ropext_sdpa at all


class _LargestTensors(TorchDispatchMode):
    """The shapes of every tensor an operation creates, seen below autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        for item in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(item, torch.Tensor):
                self.shapes.append(tuple(item.shape))
        return result


def _quadratic(shapes: list[tuple[int, ...]], length: int) -> list[tuple[int, ...]]:
    """Shapes with two dimensions of at least ``length``: a queries x keys tensor over the whole input."""
    return [shape for shape in shapes if sum(size >= length for size in shape) >= 2]


def test_no_length_by_length_tensor() -> None:
    """At 8x the window, sdpa builds a [1, 1, L, L] mask; ropext_sdpa's largest attention tensor is a block's."""
    length = 8 * WINDOW
    gemma = _model(_config(intermediate_size=80))  # every other dimension below the length
    ids = _tokens(length)
    seen = {}
    for implementation in ("sdpa", NAME):
        gemma.set_attn_implementation(implementation)
        with torch.no_grad(), _LargestTensors() as mode:
            gemma(ids)
        seen[implementation] = mode.shapes
    assert (1, 1, length, length) in _quadratic(seen["sdpa"], length)  # the check does catch the mask
    assert _quadratic(seen[NAME], length) == []
    block = sliding_attention.BLOCK
    masks = [shape for shape in seen[NAME] if len(shape) == 2 and shape[0] <= block and shape[1] > 1]
    assert masks and max(rows * cols for rows, cols in masks) <= block * (block + WINDOW - 1)


def test_windowed_sdpa_matches_a_full_mask() -> None:
    """The block computation against one SDPA call with the whole causal-window mask, queries the last keys."""
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(2, 4, size, 8, generator=generator) for size in (11, 40, 40))
    window = 6
    distance = torch.arange(29, 40)[:, None] - torch.arange(40)[None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=(distance >= 0) & (distance < window)
    )
    for block in (1, 4, 11, 64):
        torch.testing.assert_close(
            windowed_sdpa(query, key, value, window, block=block), expected, rtol=1e-5, atol=1e-6
        )
    grouped = windowed_sdpa(query, key[:, :2], value[:, :2], window, groups=2, block=4)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key[:, [0, 0, 1, 1]], value[:, [0, 0, 1, 1]], attn_mask=(distance >= 0) & (distance < window)
    )
    torch.testing.assert_close(grouped, expected, rtol=1e-5, atol=1e-6)


def test_only_models_with_sliding_layers_switch() -> None:
    assert has_sliding_layers(_config())
    assert attention_implementation(_config()) == NAME
    assert attention_implementation(_config(), "eager") == "eager"
    full_only = _config(layer_types=["full_attention"] * 6)
    assert not has_sliding_layers(full_only)
    assert attention_implementation(full_only) == "sdpa"


def test_load_model_picks_it_for_sliding_models_only(tmp_path: Path) -> None:
    """ropext's loader switches a sliding-window model to ropext_sdpa, and a folder saved from it names no
    implementation (so it loads anywhere, without ropext)."""
    _model().save_pretrained(tmp_path / "gemma")
    loaded = load_model(resolve(str(tmp_path / "gemma")), dtype=torch.float32)
    assert loaded.config._attn_implementation == NAME
    assert (
        load_model(resolve(str(tmp_path / "gemma")), attn_implementation="eager").config._attn_implementation == "eager"
    )
    loaded.save_pretrained(tmp_path / "saved")
    assert NAME not in (tmp_path / "saved" / "config.json").read_text()


def test_training_loss_and_gradients_equal_sdpa(gemma: Any) -> None:
    """Fine-tuning loads sliding models with it too: the chunked training loss and its gradients through the
    block-wise attention equal transformers' sdpa, at a length several windows long, with PoSE-like positions."""
    from ropext.train.loss import ChunkedLossModel

    length = 5 * WINDOW
    ids = _tokens(length).expand(2, -1).clone()
    positions = torch.stack([torch.arange(length), torch.arange(length) + torch.arange(length).ge(length // 2) * 40])
    results = []
    for implementation in ("sdpa", NAME):
        gemma.set_attn_implementation(implementation)
        gemma.zero_grad()
        loss = ChunkedLossModel(gemma, chunk_tokens=32)(ids, positions)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in gemma.named_parameters() if p.grad is not None}))
    (loss_sdpa, grads_sdpa), (loss_ours, grads_ours) = results
    torch.testing.assert_close(loss_ours, loss_sdpa, rtol=1e-5, atol=1e-6)
    assert grads_sdpa.keys() == grads_ours.keys() and grads_sdpa
    for name in grads_sdpa:
        torch.testing.assert_close(grads_ours[name], grads_sdpa[name], rtol=1e-4, atol=1e-6, msg=name)
    gemma.zero_grad()
