"""apply_scaling on tiny random transformers models (no downloads): buffers, logits, n̂, verification."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.methods.base import scaling_from_factors
from ropext.model.apply import StartTokenRotary, apply_scaling, verify_scaling
from ropext.model.layout import RotaryLayout, read_layout
from ropext.scaling import RopeScaling, original_inv_freq

ORIGINAL = 256
TARGET = 1024
SCALE = TARGET / ORIGINAL
LONG_INPUT = 300  # beyond the original context
VOCAB = 128
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": ORIGINAL,
}


@dataclass(frozen=True)
class Arch:
    name: str
    config_cls: type[PretrainedConfig]
    model_cls: type[nn.Module]
    extra: dict[str, Any] = field(default_factory=dict)
    partial_rotary_factor: float | None = None
    """Set when the architecture keeps partial_rotary_factor in its rope_parameters."""


ARCHS = [
    Arch("llama", LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 2}),
    Arch("mistral", MistralConfig, MistralForCausalLM, {"num_key_value_heads": 2}),
    Arch("qwen2", Qwen2Config, Qwen2ForCausalLM, {"num_key_value_heads": 2}),
    Arch("qwen3", Qwen3Config, Qwen3ForCausalLM, {"num_key_value_heads": 2, "head_dim": 16}),
    Arch(
        "phi3",
        Phi3Config,
        Phi3ForCausalLM,
        # original_max_position_embeddings: Phi3Config keeps L0 outside rope_parameters too (default 4096)
        {
            "num_key_value_heads": 2,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 1,
            "original_max_position_embeddings": ORIGINAL,
        },
        partial_rotary_factor=1.0,
    ),
    Arch("gpt_neox", GPTNeoXConfig, GPTNeoXForCausalLM, {"rotary_pct": 0.25}, partial_rotary_factor=0.25),
]
ARCH_BY_NAME = {arch.name: arch for arch in ARCHS}
# Phi-3's config accepts only rope_type longrope, so it has no native linear/yarn/dynamic config to compare with.
NATIVE_ARCHS = [arch for arch in ARCHS if arch.name != "phi3"]
METHOD_NAMES = ["pi", "yarn", "dprope", "dynamic", "custom"]


def _config(arch: Arch, **changes: Any) -> PretrainedConfig:
    return arch.config_cls(**{**COMMON, **arch.extra, **changes})


def _model(arch: Arch, config: PretrainedConfig | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return arch.model_cls(config or _config(arch)).eval()


def _rotary(model: nn.Module) -> nn.Module:
    return model.base_model.rotary_emb


def _custom_factors(pairs: int) -> list[float]:
    """A random positive vector that is not monotone (so no method could have produced it)."""
    generator = torch.Generator().manual_seed(pairs)
    factors = (0.5 + 4.0 * torch.rand(pairs, generator=generator, dtype=torch.float64)).tolist()
    factors[0], factors[-1] = 3.0, 1.5
    return factors


def _scaling(layout: RotaryLayout, method: str, target: int = TARGET) -> RopeScaling:
    if method == "custom":
        return scaling_from_factors(layout, target, "custom", _custom_factors(layout.pairs), attention_factor=1.07)
    return METHODS.get(method)(layout, target)


def _scaled_model(arch: Arch, method: str) -> tuple[nn.Module, RopeScaling]:
    model = _model(arch)
    scaling = _scaling(read_layout(model.config), method)
    apply_scaling(model, scaling)
    return model, scaling


def _logits(model: nn.Module, length: int = LONG_INPUT) -> torch.Tensor:
    tokens = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(tokens).logits.float()


def _native_rope(arch: Arch, rope: dict[str, Any]) -> dict[str, Any]:
    rope = {"rope_theta": 10000.0, **rope}
    if arch.partial_rotary_factor is not None:
        rope["partial_rotary_factor"] = arch.partial_rotary_factor
    return rope


NATIVE_CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    # method -> (rope_parameters, max_position_embeddings) of the equivalent native config
    "pi": ({"rope_type": "linear", "factor": SCALE}, TARGET),
    "yarn": ({"rope_type": "yarn", "factor": SCALE, "original_max_position_embeddings": ORIGINAL}, TARGET),
    "dynamic": ({"rope_type": "dynamic", "factor": SCALE}, ORIGINAL),
}


def _native_model(arch: Arch, method: str, weights: dict[str, torch.Tensor]) -> nn.Module:
    rope, max_positions = NATIVE_CONFIGS[method]
    config = _config(arch, rope_parameters=_native_rope(arch, rope), max_position_embeddings=max_positions)
    model = arch.model_cls(config).eval()
    model.load_state_dict(weights)
    return model


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize(("arch_name", "rotary_dim"), [(a.name, 4 if a.name == "gpt_neox" else 16) for a in ARCHS])
def test_read_layout_of_tiny_models(arch_name: str, rotary_dim: int) -> None:
    layout = read_layout(_config(ARCH_BY_NAME[arch_name]), name="tiny")
    assert layout.head_dim == 16
    assert layout.rotary_dim == rotary_dim
    assert layout.rope_theta == 10000.0
    assert layout.original_max_position_embeddings == ORIGINAL
    assert layout.layer_type is None
    assert layout.name == "tiny"


def test_read_layout_refuses_a_model_without_rope() -> None:
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=ORIGINAL, vocab_size=VOCAB)
    with pytest.raises(RopextError, match=r"'gpt2' has no rotary position embedding \(RoPE\)"):
        read_layout(config)
    with pytest.raises(RopextError, match="RoPE"):
        apply_scaling(GPT2LMHeadModel(config), _scaling(RotaryLayout("x", "gpt2", 16, 16, 1e4, ORIGINAL), "pi"))


# ---------------------------------------------------------------- buffers after applying


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("arch_name", [a.name for a in ARCHS])
def test_apply_sets_float32_inv_freq_and_attention_factor(arch_name: str, method: str) -> None:
    arch = ARCH_BY_NAME[arch_name]
    if arch_name == "phi3" and method == "dynamic":
        pytest.skip("Phi-3 accepts only longrope; test_phi3_refuses_dynamic covers it")
    model, scaling = _scaled_model(arch, method)
    rotary = _rotary(model)
    assert rotary.inv_freq.dtype == torch.float32
    if method == "dynamic":
        # Dynamic NTK starts from the original frequencies; they change per input length.
        assert torch.equal(rotary.inv_freq, original_inv_freq(scaling.rope_theta, scaling.rotary_dim))
        assert rotary.attention_scaling == 1.0
        assert model.config.max_position_embeddings == ORIGINAL
    else:
        # Closed-form methods go through transformers' own type, which rounds within 1e-6 of ropext's vector.
        torch.testing.assert_close(rotary.inv_freq, scaling.inv_freq(), rtol=1e-6, atol=0)
        assert rotary.inv_freq.dtype == torch.float32
        assert rotary.attention_scaling == pytest.approx(scaling.attention_factor, rel=1e-12)
        assert model.config.max_position_embeddings == TARGET
    verify_scaling(model, scaling)  # the applied model passes its own check


@pytest.mark.parametrize("arch_name", ["llama", "phi3", "gpt_neox"])
def test_short_and_long_inputs_use_their_own_vectors(arch_name: str) -> None:
    arch = ARCH_BY_NAME[arch_name]
    model = _model(arch)
    layout = read_layout(model.config)
    long = _scaling(layout, "custom")
    scaling = dataclasses.replace(long, short_factors=tuple(1.0 + 0.1 * i for i in range(layout.pairs)))
    apply_scaling(model, scaling)
    rotary = _rotary(model)
    assert torch.equal(rotary.inv_freq, scaling.inv_freq(ORIGINAL))  # the short vector until a long input
    assert torch.isfinite(_logits(model, LONG_INPUT)).all()
    assert torch.equal(rotary.inv_freq, scaling.inv_freq(LONG_INPUT))
    _logits(model, ORIGINAL)
    assert torch.equal(rotary.inv_freq, scaling.inv_freq(ORIGINAL))
    assert not torch.equal(scaling.inv_freq(ORIGINAL), scaling.inv_freq(LONG_INPUT))


def test_dynamic_grows_frequencies_with_the_input() -> None:
    model, scaling = _scaled_model(ARCH_BY_NAME["llama"], "dynamic")
    _logits(model)
    torch.testing.assert_close(_rotary(model).inv_freq, scaling.inv_freq(LONG_INPUT), rtol=2e-6, atol=0)
    assert not torch.equal(_rotary(model).inv_freq, scaling.inv_freq(ORIGINAL))


# ---------------------------------------------------------------- logits against native configs


@pytest.mark.parametrize("method", ["pi", "yarn", "dynamic"])
@pytest.mark.parametrize("arch_name", [a.name for a in NATIVE_ARCHS])
def test_logits_match_a_natively_configured_model(arch_name: str, method: str) -> None:
    arch = ARCH_BY_NAME[arch_name]
    model = _model(arch)
    unscaled = _logits(model)
    apply_scaling(model, _scaling(read_layout(model.config), method))
    native = _native_model(arch, method, model.state_dict())
    scaled = _logits(model)
    torch.testing.assert_close(scaled, _logits(native), rtol=1e-5, atol=1e-5)
    # The comparison has teeth: scaling really changed the output beyond the original context.
    assert (scaled - unscaled).abs().max() > 1e-4


def test_short_input_logits_of_a_static_scaling_do_not_switch_vectors() -> None:
    arch = ARCH_BY_NAME["llama"]
    model, _ = _scaled_model(arch, "pi")
    native = _native_model(arch, "pi", model.state_dict())
    torch.testing.assert_close(_logits(model, 100), _logits(native, 100), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- LongRoPE's n̂ (start_tokens)


def _cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, attention: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions.double()[:, None] * inv_freq.double()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * attention).float(), (emb.sin() * attention).float()


@pytest.mark.parametrize("start_tokens", [1, 64, 299])
def test_start_tokens_keep_original_cos_sin_below_n_hat(start_tokens: int) -> None:
    model = _model(ARCH_BY_NAME["llama"])
    base = _scaling(read_layout(model.config), "yarn")
    scaling = dataclasses.replace(base, start_tokens=start_tokens)
    apply_scaling(model, scaling)
    rotary = _rotary(model)
    assert isinstance(rotary, StartTokenRotary)

    positions = torch.arange(LONG_INPUT)
    cos, sin = rotary(torch.zeros(1, LONG_INPUT, 64), positions[None])
    cos_0, sin_0 = _cos_sin(original_inv_freq(10000.0, 16), positions, 1.0)
    cos_1, sin_1 = _cos_sin(scaling.inv_freq(LONG_INPUT), positions, scaling.attention_factor)
    early = slice(0, start_tokens)
    late = slice(start_tokens, LONG_INPUT)
    torch.testing.assert_close(cos[0, early], cos_0[early], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(sin[0, early], sin_0[early], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(cos[0, late], cos_1[late], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(sin[0, late], sin_1[late], rtol=1e-5, atol=2e-5)
    assert scaling.attention_factor > 1.1  # so a wrong attention factor on either side would show


def test_start_tokens_positions_all_beyond_n_hat_are_scaled() -> None:
    model = _model(ARCH_BY_NAME["llama"])
    scaling = dataclasses.replace(_scaling(read_layout(model.config), "yarn"), start_tokens=10)
    apply_scaling(model, scaling)
    positions = torch.arange(200, LONG_INPUT)
    cos, _ = _rotary(model)(torch.zeros(1, positions.numel(), 64), positions[None])
    expected, _ = _cos_sin(scaling.inv_freq(LONG_INPUT), positions, scaling.attention_factor)
    torch.testing.assert_close(cos[0], expected, rtol=1e-5, atol=2e-5)


def test_start_tokens_change_the_model_output() -> None:
    arch = ARCH_BY_NAME["llama"]
    plain, scaling = _scaled_model(arch, "yarn")
    with_n_hat = _model(arch)
    apply_scaling(with_n_hat, dataclasses.replace(scaling, start_tokens=8))
    verify_scaling(with_n_hat, dataclasses.replace(scaling, start_tokens=8))
    a, b = _logits(plain), _logits(with_n_hat)
    assert (a - b).abs().max() > 1e-4  # the first 8 positions differ, and attention spreads it


# ---------------------------------------------------------------- verification and refusals


def test_verify_catches_bfloat16_cast_of_the_model() -> None:
    model, scaling = _scaled_model(ARCH_BY_NAME["llama"], "pi")
    model.to(torch.bfloat16)
    with pytest.raises(RopextError, match=r"inv_freq is torch.bfloat16, not float32"):
        verify_scaling(model, scaling)


def test_verify_catches_bfloat16_cast_of_the_buffer() -> None:
    model, scaling = _scaled_model(ARCH_BY_NAME["qwen3"], "yarn")
    rotary = _rotary(model)
    rotary.inv_freq = rotary.inv_freq.to(torch.bfloat16)
    with pytest.raises(RopextError, match="not float32"):
        verify_scaling(model, scaling)


@pytest.mark.parametrize("method", ["pi", "yarn", "custom", "dynamic"])
def test_verify_catches_overwritten_frequencies(method: str) -> None:
    model, scaling = _scaled_model(ARCH_BY_NAME["llama"], method)
    # Dynamic NTK's live buffer follows the input length, so the check reads its starting frequencies.
    buffer = "original_inv_freq" if method == "dynamic" else "inv_freq"
    getattr(_rotary(model), buffer).mul_(1.0001)
    with pytest.raises(RopextError, match=r"model.rotary_emb.inv_freq differs from the scaling's"):
        verify_scaling(model, scaling)


def test_verify_catches_the_original_frequencies() -> None:
    model, scaling = _scaled_model(ARCH_BY_NAME["mistral"], "pi")
    _rotary(model).inv_freq.copy_(original_inv_freq(10000.0, 16))
    with pytest.raises(RopextError, match="differs"):
        verify_scaling(model, scaling)


def test_verify_catches_a_wrong_attention_factor() -> None:
    model, scaling = _scaled_model(ARCH_BY_NAME["llama"], "yarn")
    _rotary(model).attention_scaling = 1.0
    with pytest.raises(RopextError, match=r"scales attention by 1\.0, not 1\.13"):
        verify_scaling(model, scaling)


def test_apply_refuses_a_scaling_of_another_rotary_dim() -> None:
    model = _model(ARCH_BY_NAME["llama"])
    before = _rotary(model).inv_freq.clone()
    other = _scaling(RotaryLayout("other", "llama", 32, 32, 10000.0, ORIGINAL), "pi")
    with pytest.raises(RopextError, match=r"rotary_dim 32.*rotates 16 dims per head"):
        apply_scaling(model, other, source="other.yaml")
    assert torch.equal(_rotary(model).inv_freq, before)
    assert model.config.rope_parameters["rope_type"] == "default"


def test_apply_refuses_a_scaling_of_another_base() -> None:
    model = _model(ARCH_BY_NAME["qwen2"])
    other = _scaling(RotaryLayout("other", "qwen2", 16, 16, 1e6, ORIGINAL), "yarn")
    with pytest.raises(RopextError, match="rope_theta is 1e"):
        apply_scaling(model, other)


def test_apply_refuses_full_head_factors_on_partial_rotary_model() -> None:
    model = _model(ARCH_BY_NAME["gpt_neox"])
    full = _scaling(RotaryLayout("full", "gpt_neox", 16, 16, 10000.0, ORIGINAL), "pi")
    with pytest.raises(RopextError, match="has 8 factors"):
        apply_scaling(model, full)


# ---------------------------------------------------------------- Gemma 3: per-layer-type RoPE


def _gemma3_config(**changes: Any) -> Gemma3TextConfig:
    values: dict[str, Any] = {
        **COMMON,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        "sliding_window": 32,
    }
    values.update(changes)
    return Gemma3TextConfig(**values)


def _gemma3(config: Gemma3TextConfig | None = None) -> nn.Module:
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config or _gemma3_config()).eval()


def test_gemma3_layout_is_the_full_attention_one() -> None:
    config = _gemma3_config()
    sliding = config.rope_parameters["sliding_attention"]["rope_theta"]
    full = config.rope_parameters["full_attention"]["rope_theta"]
    assert sliding != full
    layout = read_layout(config)
    assert layout.layer_type == "full_attention"
    assert layout.rope_theta == full
    assert layout.rotary_dim == 16


@pytest.mark.parametrize("method", ["pi", "yarn", "custom"])
def test_gemma3_rescales_full_attention_only(method: str) -> None:
    model = _gemma3()
    rotary = _rotary(model)
    sliding_before = rotary.sliding_attention_inv_freq.clone()
    sliding_params = dict(model.config.rope_parameters["sliding_attention"])
    scaling = _scaling(read_layout(model.config), method)
    apply_scaling(model, scaling)
    rotary = _rotary(model)
    assert rotary.full_attention_inv_freq.dtype == torch.float32
    torch.testing.assert_close(rotary.full_attention_inv_freq, scaling.inv_freq(), rtol=1e-6, atol=0)
    assert rotary.full_attention_attention_scaling == pytest.approx(scaling.attention_factor, rel=1e-12)
    assert torch.equal(rotary.sliding_attention_inv_freq, sliding_before)
    assert rotary.sliding_attention_attention_scaling == 1.0
    assert model.config.rope_parameters["sliding_attention"] == sliding_params


def test_gemma3_logits_match_native_yarn_on_full_attention() -> None:
    model = _gemma3()
    layout = read_layout(model.config)
    apply_scaling(model, _scaling(layout, "yarn"))
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {
            "rope_type": "yarn",
            "rope_theta": layout.rope_theta,
            "factor": SCALE,
            "original_max_position_embeddings": ORIGINAL,
        },
    }
    native = Gemma3ForCausalLM(_gemma3_config(rope_parameters=rope, max_position_embeddings=TARGET)).eval()
    native.load_state_dict(model.state_dict())
    torch.testing.assert_close(_logits(model), _logits(native), rtol=1e-5, atol=1e-5)


def test_gemma3_verify_catches_overwritten_full_attention_frequencies() -> None:
    model = _gemma3()
    scaling = _scaling(read_layout(model.config), "pi")
    apply_scaling(model, scaling)
    _rotary(model).full_attention_inv_freq.mul_(2.0)
    with pytest.raises(RopextError, match="differs"):
        verify_scaling(model, scaling)


def test_phi3_refuses_dynamic_with_one_clear_error() -> None:
    # Phi-3's config accepts only longrope; a dynamic scaling must be refused when applied, not when
    # the model is saved much later.
    with pytest.raises(RopextError, match="cannot carry a dynamic scaling"):
        _scaled_model(ARCH_BY_NAME["phi3"], "dynamic")


def test_verify_accepts_both_vectors_after_long_and_short_inputs() -> None:
    # longrope swaps between the short and the long vector per call; after a forward pass longer
    # than L0 the buffer holds the long one and the model is still correctly scaled.
    model, scaling = _scaled_model(ARCH_BY_NAME["llama"], "pi")
    scaling = dataclasses.replace(scaling, short_factors=tuple(1.0 for _ in scaling.factors))
    apply_scaling(model, scaling)
    with torch.no_grad():
        model(torch.zeros(1, ORIGINAL + 8, dtype=torch.long))
    assert torch.equal(_rotary(model).inv_freq, scaling.inv_freq())
    verify_scaling(model, scaling)


@pytest.mark.parametrize(
    ("method", "native"),
    [("pi", "linear"), ("yarn", "yarn"), ("llama3", "llama3"), ("dprope", "longrope"), ("ntk", "longrope")],
)
def test_closed_form_methods_use_transformers_native_types(method: str, native: str) -> None:
    # The same dict `ropext export` writes: a patched model and its checkpoint compute the same.
    model, _ = _scaled_model(ARCH_BY_NAME["llama"], method)
    assert model.config.rope_parameters["rope_type"] == native


def test_scalings_can_be_applied_one_after_another_to_the_same_model() -> None:
    # `ropext.compare` evaluates several methods on one loaded model: each application must start
    # from the model's original layout, whatever type the previous one wrote (linear, dynamic...).
    model = _model(ARCH_BY_NAME["llama"])
    layout = read_layout(model.config)
    for name in ("pi", "dynamic", "yarn", "none", "dprope", "llama3", "pi"):
        scaling = METHODS.get(name)(layout, TARGET)
        apply_scaling(model, scaling)
        assert read_layout(model.config) == layout
