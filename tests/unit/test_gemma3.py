"""Gemma 3 (the `gemma3-270m` alias's architecture) on a tiny random config, no download: sliding-window
local layers with their own RoPE base, global layers with another; ropext rescales the global ones only.

Checked against transformers' own rope functions and against a Gemma 3 built natively with the scaled
rope dict, with inputs longer than both the sliding window and the original context; and an exported
folder loads in plain transformers into the same logits as ropext's patched model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropext.export import export_model
from ropext.methods import METHODS
from ropext.methods.base import scaling_from_factors
from ropext.model.apply import apply_scaling
from ropext.model.layout import RotaryLayout, read_layout
from ropext.model.loading import load_model, resolve
from ropext.scaling import RopeScaling

ORIGINAL = 64
TARGET = 256
WINDOW = 16  # local layers see 16 tokens: every input below slides
LOCAL_THETA, GLOBAL_THETA = 1_000.0, 500_000.0
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"] * 2
VOCAB = 96
SHORT_INPUT, LONG_INPUT = 48, 160  # below and beyond the original context, both beyond the window
METHODS_TESTED = {"yarn": "yarn", "pi": "linear", "vector": "longrope"}
"""How each scaling is written into the global layers' rope dict."""


def _config(**changes: Any) -> Gemma3TextConfig:
    values: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": len(LAYER_TYPES),
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "layer_types": LAYER_TYPES,
        "sliding_window": WINDOW,
        "max_position_embeddings": ORIGINAL,
        # the legacy names of the two bases, as Gemma 3 checkpoints and GGUF files carry them
        "rope_theta": GLOBAL_THETA,
        "rope_local_base_freq": LOCAL_THETA,
        "initializer_range": 0.1,  # attention far from uniform, so RoPE changes move the logits
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    values.update(changes)
    return Gemma3TextConfig(**values)


def _model(config: Gemma3TextConfig | None = None) -> nn.Module:
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config or _config()).eval()


def _scaling(layout: RotaryLayout, method: str) -> RopeScaling:
    if method == "vector":  # a searched-looking vector, not monotone, with its own attention factor
        generator = torch.Generator().manual_seed(7)
        factors = (1.0 + 3.0 * torch.rand(layout.pairs, generator=generator, dtype=torch.float64)).tolist()
        return scaling_from_factors(layout, TARGET, "custom", factors, attention_factor=1.11)
    return METHODS.get(method)(layout, TARGET)


def _tokens(length: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))


def _logits(model: nn.Module, length: int) -> torch.Tensor:
    with torch.no_grad():
        return model(_tokens(length)).logits.float()


def test_layout_is_the_global_layers_rope() -> None:
    config = _config()
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == LOCAL_THETA
    layout = read_layout(config, name="tiny-gemma3")
    assert layout.layer_type == "full_attention"
    assert layout.rope_theta == GLOBAL_THETA
    assert (layout.head_dim, layout.rotary_dim, layout.original_max_position_embeddings) == (16, 16, ORIGINAL)


@pytest.mark.parametrize("method", list(METHODS_TESTED))
def test_only_the_global_layers_rotary_changes(method: str) -> None:
    model = _model()
    rotary = model.model.rotary_emb
    local_before = rotary.sliding_attention_inv_freq.clone()
    scaling = _scaling(read_layout(model.config), method)
    apply_scaling(model, scaling)
    config, rotary = model.config, model.model.rotary_emb

    assert config.rope_parameters["full_attention"]["rope_type"] == METHODS_TESTED[method]
    assert config.rope_parameters["sliding_attention"] == {"rope_type": "default", "rope_theta": LOCAL_THETA}
    # transformers' own function for the global dict gives exactly the buffer the global layers use
    expected, attention = ROPE_INIT_FUNCTIONS[METHODS_TESTED[method]](config, None, layer_type="full_attention")
    assert rotary.full_attention_inv_freq.dtype == torch.float32
    torch.testing.assert_close(rotary.full_attention_inv_freq, expected, rtol=0, atol=0)
    torch.testing.assert_close(rotary.full_attention_inv_freq, scaling.inv_freq(), rtol=1e-6, atol=0)
    assert rotary.full_attention_attention_scaling == pytest.approx(attention, rel=1e-12)
    assert attention == pytest.approx(scaling.attention_factor, rel=1e-12)
    # the local layers keep the unscaled frequencies of their own base
    local_default = 1.0 / LOCAL_THETA ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    assert torch.equal(rotary.sliding_attention_inv_freq, local_before)
    torch.testing.assert_close(rotary.sliding_attention_inv_freq, local_default, rtol=1e-6, atol=0)
    assert rotary.sliding_attention_attention_scaling == 1.0


@pytest.mark.parametrize("method", ["yarn", "vector"])
def test_logits_equal_a_gemma3_built_with_the_scaled_global_rope(method: str) -> None:
    # Built natively, transformers routes each layer type's cos/sin to its own layers; equal logits mean
    # the patched model does too (a scaled local layer, or an unscaled global one, would differ).
    model = _model()
    unscaled = _logits(model, LONG_INPUT)
    scaling = _scaling(read_layout(model.config), method)
    apply_scaling(model, scaling)
    rope = model.config.rope_parameters
    native = Gemma3ForCausalLM(_config(rope_parameters=rope, max_position_embeddings=TARGET)).eval()
    native.load_state_dict(model.state_dict())
    for length in (SHORT_INPUT, LONG_INPUT):
        torch.testing.assert_close(_logits(model, length), _logits(native, length), rtol=1e-5, atol=1e-5)
    assert (_logits(model, LONG_INPUT) - unscaled).abs().max() > 1e-3


def test_scaling_the_local_layers_would_show_in_the_logits() -> None:
    # The comparison above can tell the layer types apart: scaling the local layers as well changes the logits.
    model = _model()
    scaling = _scaling(read_layout(model.config), "yarn")
    apply_scaling(model, scaling)
    both = dict(model.config.rope_parameters)
    both["sliding_attention"] = {**both["full_attention"], "rope_theta": LOCAL_THETA}
    wrong = Gemma3ForCausalLM(_config(rope_parameters=both, max_position_embeddings=TARGET)).eval()
    wrong.load_state_dict(model.state_dict())
    assert (_logits(model, LONG_INPUT) - _logits(wrong, LONG_INPUT)).abs().max() > 1e-3


def test_every_long_input_rebuilds_the_long_frequencies() -> None:
    # transformers 5.17 caches the global layers' long frequencies after one input beyond the original
    # context and fails on the next (it finds the cache and never reads it); ropext drops the cache before
    # each call. A stale cache planted between two long inputs must therefore change nothing.
    model = _model()
    apply_scaling(model, _scaling(read_layout(model.config), "vector"))
    first = _logits(model, LONG_INPUT)
    rotary = model.model.rotary_emb
    # the name transformers caches the long frequencies under (read back if present, by 5.18 and later)
    rotary.full_attention_long_inv_freq = torch.zeros_like(rotary.full_attention_inv_freq)
    torch.testing.assert_close(_logits(model, LONG_INPUT), first, rtol=0, atol=0)
    torch.testing.assert_close(_logits(model, LONG_INPUT), first, rtol=0, atol=0)


@pytest.fixture(scope="module")
def gemma3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-gemma3")
    _model().save_pretrained(folder)
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["yarn", "vector"])
def test_export_loads_in_plain_transformers_with_equal_logits(method: str, gemma3_folder: Path, tmp_path: Path) -> None:
    before = json.loads((gemma3_folder / "config.json").read_text())
    patched = load_model(resolve(str(gemma3_folder)), dtype=torch.float32)
    scaling = _scaling(read_layout(patched.config), method)
    apply_scaling(patched, scaling)
    out = export_model(str(gemma3_folder), scaling, tmp_path / "exported")

    config = json.loads((out / "config.json").read_text())
    assert config["layer_types"] == LAYER_TYPES and config["sliding_window"] == WINDOW
    assert config["rope_parameters"]["sliding_attention"] == before["rope_parameters"]["sliding_attention"]
    assert config["rope_parameters"]["full_attention"]["rope_type"] == METHODS_TESTED[method]
    assert config["max_position_embeddings"] == TARGET
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(plain) is Gemma3ForCausalLM
    for length in (SHORT_INPUT, LONG_INPUT):
        torch.testing.assert_close(_logits(plain, length), _logits(patched, length), rtol=1e-5, atol=1e-5)
    unscaled = AutoModelForCausalLM.from_pretrained(gemma3_folder, dtype=torch.float32).eval()
    assert (_logits(plain, LONG_INPUT) - _logits(unscaled, LONG_INPUT)).abs().max() > 1e-3
