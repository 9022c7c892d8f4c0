"""`ropext.model.rope_config` and the facts a method's registry entry carries: a method registered as a plugin
(here, in the test) is exported and applied like a built-in one, with no edit anywhere else."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import ropext.registry
from ropext.errors import RopextError
from ropext.export import YAML_NAME, export_model
from ropext.methods import METHODS, method_of
from ropext.methods.attention import longrope_attention, yarn_attention
from ropext.methods.base import Method, scaling_from_factors
from ropext.methods.dynamic import dynamic_factors
from ropext.model.apply import apply_scaling
from ropext.model.layout import RotaryLayout, read_layout
from ropext.model.rope_config import native_rope_parameters, rope_parameters, verify_scaling
from ropext.scaling import RopeScaling

ORIGINAL = 64
TARGET = 256
VOCAB = 64
LAYOUT = RotaryLayout(
    "tiny", "llama", head_dim=16, rotary_dim=16, rope_theta=10000.0, original_max_position_embeddings=64
)


@dataclass(frozen=True)
class _NoParams:
    """No parameters."""


def _stretch(layout: RotaryLayout, target_length: int, params: _NoParams) -> RopeScaling:
    s = target_length / layout.original_max_position_embeddings
    return scaling_from_factors(layout, target_length, "stretch", [s] * layout.pairs)


def _tilted(layout: RotaryLayout, target_length: int, params: _NoParams) -> RopeScaling:
    s = target_length / layout.original_max_position_embeddings
    factors = [1.0 + (s - 1.0) * i / (layout.pairs - 1) for i in range(layout.pairs)]
    attention = TILTED.attention_default(s, layout.original_max_position_embeddings)
    return scaling_from_factors(layout, target_length, "tilted", factors, attention_factor=attention)


def _growing(layout: RotaryLayout, target_length: int, params: _NoParams) -> RopeScaling:
    s = target_length / layout.original_max_position_embeddings
    factors = dynamic_factors(layout.rotary_dim, layout.original_max_position_embeddings, s, target_length)
    return scaling_from_factors(layout, target_length, "growing", factors)


STRETCH = Method(
    "stretch", _NoParams, _stretch, native=lambda scaling: {"rope_type": "linear", "factor": scaling.scale}
)
"""Every pair divided by s, like PI: transformers' linear type computes it."""
TILTED = Method("tilted", _NoParams, _tilted, attention_default=lambda s, original: 1.0 + 0.05 * math.log(s))
"""A vector no native type computes, with its own attention default."""
GROWING = Method(
    "growing",
    _NoParams,
    _growing,
    native=lambda scaling: {"rope_type": "dynamic", "factor": scaling.scale},
    runtime_factors=dynamic_factors,
)
"""A second name for dynamic NTK: dynamic by its entry, not by its name."""


class _EntryPoint:
    def load(self) -> Any:
        def register() -> None:
            for method in (STRETCH, TILTED, GROWING):
                METHODS.register(method.name, method, f"test plugin {method.name}")

        return register


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The three methods, registered through the ``ropext.plugins`` entry-point group as a package would."""
    import importlib.metadata

    for attr in ("_entries", "_alias_of", "_loaded"):
        monkeypatch.setattr(METHODS, attr, dict(getattr(METHODS, attr)))
    monkeypatch.setattr(ropext.registry, "_plugins_loaded", False)
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [_EntryPoint()] if group == "ropext.plugins" else []
    )
    ropext.registry.load_plugins()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=ORIGINAL,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return folder


def _exported_rope(folder: Path, scaling: RopeScaling, out: Path) -> dict[str, Any]:
    export_model(str(folder), scaling, out)
    assert RopeScaling.load(out / YAML_NAME) == scaling
    return json.loads((out / "config.json").read_text())["rope_parameters"]


# ---------------------------------------------------------------- plugin methods


def test_a_plugin_method_with_a_native_form_is_exported_and_applied_as_that_type(
    plugins: None, tiny_llama: Path, tmp_path: Path
) -> None:
    layout = read_layout(LlamaConfig.from_pretrained(tiny_llama))
    scaling = METHODS.get("stretch")(layout, TARGET)
    rope = _exported_rope(tiny_llama, scaling, tmp_path / "out")
    assert rope["rope_type"] == "linear" and rope["factor"] == TARGET / ORIGINAL
    model = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_llama), scaling)
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.max_position_embeddings == TARGET


def test_a_plugin_method_without_a_native_form_is_written_as_longrope_with_its_attention_default(
    plugins: None, tiny_llama: Path, tmp_path: Path
) -> None:
    layout = read_layout(LlamaConfig.from_pretrained(tiny_llama))
    scaling = METHODS.get("tilted")(layout, TARGET)
    assert scaling.attention_factor == pytest.approx(1.0 + 0.05 * math.log(4))
    rope = _exported_rope(tiny_llama, scaling, tmp_path / "out")
    assert rope["rope_type"] == "longrope"
    assert rope["long_factor"] == list(scaling.factors)
    assert rope["attention_factor"] == rope["short_mscale"] == scaling.attention_factor
    model = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_llama), scaling)
    assert model.model.rotary_emb.attention_scaling == pytest.approx(scaling.attention_factor)


def test_a_plugin_method_is_dynamic_because_its_entry_says_so(plugins: None, tiny_llama: Path, tmp_path: Path) -> None:
    layout = read_layout(LlamaConfig.from_pretrained(tiny_llama))
    scaling = METHODS.get("growing")(layout, TARGET)
    assert scaling.is_dynamic and not scaling.is_identity
    # Its factors follow the input length through the entry's function, as dynamic NTK's do.
    assert scaling.factors_for(ORIGINAL) == (1.0,) * layout.pairs
    assert scaling.factors_for(TARGET // 2) == dynamic_factors(16, ORIGINAL, 4.0, TARGET // 2)
    with pytest.raises(RopextError, match="takes no short_factors or start_tokens"):
        RopeScaling(**{**scaling.to_dict(), "start_tokens": 4})
    rope = _exported_rope(tiny_llama, scaling, tmp_path / "out")
    assert rope["rope_type"] == "dynamic" and rope["factor"] == 4.0
    model = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_llama), scaling)
    assert model.config.max_position_embeddings == ORIGINAL  # dynamic NTK measures inputs against L0


def test_a_dynamic_method_without_a_native_form_is_refused_in_one_line(plugins: None) -> None:
    orphan = Method("orphan", _NoParams, _growing, runtime_factors=dynamic_factors)
    METHODS.register("orphan", orphan, "dynamic, no native form")
    scaling = RopeScaling(**{**METHODS.get("growing")(LAYOUT, TARGET).to_dict(), "method": "orphan"})
    assert scaling.is_dynamic
    with pytest.raises(RopextError, match="'orphan' changes its frequencies with the input length but names no native"):
        rope_parameters(scaling, {"rope_theta": 10000.0})


# ---------------------------------------------------------------- built-in facts


def test_built_in_entries_carry_their_facts() -> None:
    assert [
        name for name in ("none", "pi", "ntk", "dynamic", "yarn", "llama3", "dprope") if METHODS.get(name).dynamic
    ] == ["dynamic"]
    assert {
        name for name in ("none", "pi", "ntk", "dynamic", "yarn", "llama3", "dprope") if METHODS.get(name).native
    } == {
        "pi",
        "dynamic",
        "yarn",
        "llama3",
    }
    assert method_of("linear") is METHODS.get("pi")
    assert method_of("dcis") is None  # a searcher's label: a vector, never dynamic
    yarn = METHODS.get("yarn")
    assert yarn.attention_default(8.0, ORIGINAL) == 0.1 * math.log(8.0) + 1.0
    assert yarn(LAYOUT, 8 * ORIGINAL).attention_factor == yarn.attention_default(8.0, ORIGINAL)
    assert METHODS.get("pi").attention_default(8.0, ORIGINAL) == 1.0


def test_attention_formulas() -> None:
    assert yarn_attention(1.0) == longrope_attention(1.0, 4096) == 1.0
    assert yarn_attention(16.0, coefficient=0.5) == pytest.approx(0.05 * math.log(16.0) + 1.0)
    assert longrope_attention(8.0, 4096) == pytest.approx(math.sqrt(1 + math.log(8) / math.log(4096)))
    # `--attention-factor yarn|longrope` of the search resolves to the same formulas.
    from ropext.search.run import attention_factor

    assert attention_factor("yarn", 8.0, 4096) == yarn_attention(8.0) == 0.1 * math.log(8.0) + 1.0
    assert attention_factor("longrope", 8.0, 4096) == longrope_attention(8.0, 4096)


def test_a_searched_vector_labelled_like_a_method_but_edited_is_longrope() -> None:
    pi = METHODS.get("pi")(LAYOUT, TARGET)
    edited = RopeScaling(**{**pi.to_dict(), "factors": [*pi.factors[:-1], 2.0]})
    assert native_rope_parameters(pi, {"rope_theta": 10000.0})["rope_type"] == "linear"
    assert native_rope_parameters(edited, {"rope_theta": 10000.0})["rope_type"] == "longrope"


def test_verify_scaling_refuses_a_model_that_does_not_hold_the_scaling(tiny_llama: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    layout = read_layout(model.config)
    with pytest.raises(RopextError, match=r"applying pi failed: model\.rotary_emb\.inv_freq differs"):
        verify_scaling(model, METHODS.get("pi")(layout, TARGET))
    verify_scaling(model, METHODS.get("none")(layout, ORIGINAL))
