"""`ropext.export` on tiny random models (no downloads): the native rope dict per method, and exported
folders that plain transformers loads into the same logits as ropext's patched model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from ropext.errors import RopextError
from ropext.export import YAML_NAME, export_model
from ropext.methods import METHODS
from ropext.methods.base import scaling_from_factors
from ropext.model.apply import apply_scaling
from ropext.model.layout import RotaryLayout, read_layout
from ropext.model.loading import load_model, resolve
from ropext.model.rope_config import native_rope_parameters
from ropext.scaling import RopeScaling

ORIGINAL = 64
TARGET = 256
SHORT_INPUT = 48  # below the original context
LONG_INPUT = 160  # beyond it
VOCAB = 96
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": ORIGINAL,
    # Wider than the default 0.02, so attention is far from uniform and rescaling RoPE visibly moves the logits.
    "initializer_range": 0.1,
}


@dataclass(frozen=True)
class Arch:
    name: str
    config_cls: type[PretrainedConfig]
    model_cls: type[nn.Module]
    extra: dict[str, Any] = field(default_factory=dict)


ARCHS = {
    arch.name: arch
    for arch in [
        Arch("llama", LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 2}),
        # Partial rotary: half of each 16-dim head rotates (4 pairs).
        # One rope dict per layer type: only the full-attention one is rescaled.
        Arch(
            "gemma3",
            Gemma3TextConfig,
            Gemma3ForCausalLM,
            {"num_key_value_heads": 2, "head_dim": 16, "layer_types": ["sliding_attention", "full_attention"]},
        ),
        Arch("gpt_neox", GPTNeoXConfig, GPTNeoXForCausalLM, {"rotary_pct": 0.5}),
        # Phi-3 accepts only longrope (and keeps L0 outside rope_parameters too).
        Arch(
            "phi3",
            Phi3Config,
            Phi3ForCausalLM,
            {"num_key_value_heads": 2, "original_max_position_embeddings": ORIGINAL, "pad_token_id": 0},
        ),
    ]
}
NATIVE_TYPE = {"custom": "longrope", "ntk": "longrope", "yarn": "yarn", "pi": "linear", "llama3": "llama3"}
NATIVE_TYPE["dynamic"] = "dynamic"
CASES = [
    *((arch, method) for arch in ("llama", "gpt_neox") for method in ("custom", "yarn", "pi", "llama3", "dynamic")),
    *(("phi3", method) for method in ("custom", "yarn", "pi", "llama3")),
]


def _custom_factors(pairs: int) -> list[float]:
    """A positive vector that is not monotone (no closed-form method produces it)."""
    generator = torch.Generator().manual_seed(pairs)
    factors = (0.5 + 4.0 * torch.rand(pairs, generator=generator, dtype=torch.float64)).tolist()
    factors[0], factors[-1] = 3.0, 1.5
    return factors


def _scaling(layout: RotaryLayout, method: str, **params: Any) -> RopeScaling:
    if method == "custom":
        return scaling_from_factors(layout, TARGET, "custom", _custom_factors(layout.pairs), attention_factor=1.07)
    return METHODS.get(method)(layout, TARGET, **params)


LAYOUT = RotaryLayout(
    "tiny", "llama", head_dim=16, rotary_dim=16, rope_theta=10000.0, original_max_position_embeddings=64
)


# ---------------------------------------------------------------- tiny model folders


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast) -> dict[str, Path]:
    folders = {}
    for arch in ARCHS.values():
        folder = tmp_path_factory.mktemp(f"tiny-{arch.name}")
        torch.manual_seed(0)
        config = arch.config_cls(**{**COMMON, **arch.extra, "bos_token_id": 1, "eos_token_id": 2})
        arch.model_cls(config).eval().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "generation_config.json").unlink()  # test_generation_config_is_kept... adds one where needed
        folders[arch.name] = folder
    return folders


def _tokens(length: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))


def _logits(model: nn.Module, length: int) -> torch.Tensor:
    with torch.no_grad():
        return model(_tokens(length)).logits.float()


def _patched(folder: Path, scaling: RopeScaling | None) -> nn.Module:
    model = load_model(resolve(str(folder)), dtype=torch.float32)
    if scaling is not None:
        apply_scaling(model, scaling)
    return model


def _export(folder: Path, method: str, out: Path) -> tuple[RopeScaling, Path]:
    layout = read_layout(_config_of(folder), name=str(folder))
    scaling = _scaling(layout, method)
    return scaling, export_model(str(folder), scaling, out)


def _config_of(folder: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


# ---------------------------------------------------------------- the rope dict


@pytest.mark.parametrize("method", ["custom", "ntk", "dprope", "yarn", "pi", "llama3", "dynamic"])
def test_native_type_per_method(method: str) -> None:
    scaling = _scaling(LAYOUT, method)
    rope = native_rope_parameters(scaling, {"rope_type": "default", "rope_theta": 10000.0})
    assert rope["rope_type"] == NATIVE_TYPE.get(method, "longrope")
    assert rope["rope_theta"] == 10000.0
    if rope["rope_type"] == "longrope":
        # vLLM's longrope schema, and transformers' explicit attention factor
        assert rope["long_factor"] == list(scaling.factors)
        assert rope["short_factor"] == list(scaling.factors)
        assert rope["original_max_position_embeddings"] == ORIGINAL
        assert rope["attention_factor"] == scaling.attention_factor
        assert rope["factor"] == TARGET / ORIGINAL
    elif rope["rope_type"] == "yarn":
        assert rope == {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": ORIGINAL,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "attention_factor": scaling.attention_factor,
            "truncate": True,
        }
    elif rope["rope_type"] == "linear":
        assert rope == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
    elif rope["rope_type"] == "llama3":
        assert rope["factor"] == 4.0
        assert (rope["low_freq_factor"], rope["high_freq_factor"]) == (1.0, 4.0)
        assert rope["original_max_position_embeddings"] == ORIGINAL
    else:
        assert rope == {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}


def test_yarn_keeps_its_own_parameters() -> None:
    scaling = _scaling(LAYOUT, "yarn", beta_fast=16.0, beta_slow=2.0, truncate=False)
    rope = native_rope_parameters(scaling, {"rope_theta": 10000.0})
    assert rope["rope_type"] == "yarn"
    assert (rope["beta_fast"], rope["beta_slow"], rope["truncate"]) == (16.0, 2.0, False)


@pytest.mark.parametrize("provenance", [{}, {"params": {"factor": None, "beta_fast": None, "truncate": None}}])
def test_yarn_without_recorded_parameters_uses_the_defaults(provenance: dict) -> None:
    scaling = dataclasses.replace(_scaling(LAYOUT, "yarn"), provenance=provenance)
    rope = native_rope_parameters(scaling, {"rope_theta": 10000.0})
    assert rope["rope_type"] == "yarn"
    assert (rope["factor"], rope["beta_fast"], rope["truncate"]) == (4.0, 32.0, True)


def test_yarn_whose_parameters_do_not_reproduce_its_factors_falls_back_to_longrope() -> None:
    scaling = _scaling(LAYOUT, "yarn")
    lying = scaling.with_provenance(params={**scaling.provenance["params"], "beta_fast": 2.0})
    rope = native_rope_parameters(lying, {"rope_theta": 10000.0})
    assert rope["rope_type"] == "longrope"
    assert rope["long_factor"] == list(scaling.factors)
    assert rope["attention_factor"] == scaling.attention_factor


def test_a_hand_edited_pi_vector_falls_back_to_longrope() -> None:
    scaling = _scaling(LAYOUT, "pi")
    edited = dataclasses.replace(scaling, factors=(1.0, *scaling.factors[1:]))
    assert native_rope_parameters(edited, {"rope_theta": 10000.0})["rope_type"] == "longrope"


def test_longrope_keeps_short_factors_and_partial_rotary() -> None:
    scaling = dataclasses.replace(_scaling(LAYOUT, "custom"), short_factors=tuple(1.0 + 0.1 * i for i in range(8)))
    rope = native_rope_parameters(scaling, {"rope_theta": 10000.0, "partial_rotary_factor": 1.0})
    assert rope["short_factor"] == list(scaling.short_factors)
    assert rope["long_factor"] == list(scaling.factors)
    assert rope["partial_rotary_factor"] == 1.0
    # a closed-form type holds one vector: a yarn with a short vector is longrope too
    yarn = dataclasses.replace(_scaling(LAYOUT, "yarn"), short_factors=scaling.short_factors)
    assert native_rope_parameters(yarn, {"rope_theta": 10000.0})["rope_type"] == "longrope"


def test_vllm_attention_keys_only_where_vllm_would_guess_wrong() -> None:
    custom = native_rope_parameters(_scaling(LAYOUT, "custom"), {"rope_theta": 10000.0})
    assert custom["short_mscale"] == custom["long_mscale"] == 1.07
    vllm_default = (1 + torch.log(torch.tensor(4.0)).item() / torch.log(torch.tensor(64.0)).item()) ** 0.5
    searched = dataclasses.replace(_scaling(LAYOUT, "custom"), method="longrope", attention_factor=vllm_default)
    rope = native_rope_parameters(searched, {"rope_theta": 10000.0})
    assert "short_mscale" not in rope and "long_mscale" not in rope


def test_phi3_gets_longrope_for_every_static_method() -> None:
    config = Phi3Config(**{**COMMON, **ARCHS["phi3"].extra})
    for method in ("yarn", "pi", "llama3", "custom"):
        rope = native_rope_parameters(_scaling(LAYOUT, method), dict(config.rope_parameters), config=config)
        assert rope["rope_type"] == "longrope", method
    with pytest.raises(RopextError, match="'phi3' does not accept rope type 'dynamic'"):
        native_rope_parameters(_scaling(LAYOUT, "dynamic"), dict(config.rope_parameters), config=config)


def test_start_tokens_are_refused_with_what_to_do() -> None:
    scaling = dataclasses.replace(_scaling(LAYOUT, "custom"), start_tokens=4)
    with pytest.raises(RopextError, match=r"start_tokens \(n̂ = 4\) cannot be expressed") as caught:
        native_rope_parameters(scaling, {"rope_theta": 10000.0})
    assert "search_start_tokens=false" in str(caught.value)
    assert "ropext eval" in str(caught.value)


# ---------------------------------------------------------------- exported folders


@pytest.mark.parametrize(("arch_name", "method"), CASES)
def test_plain_transformers_matches_the_patched_model(
    arch_name: str, method: str, model_folders: dict[str, Path], tmp_path: Path
) -> None:
    source = model_folders[arch_name]
    scaling, out = _export(source, method, tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    rope = config["rope_parameters"]
    expected_type = "longrope" if arch_name == "phi3" else NATIVE_TYPE[method]
    assert rope["rope_type"] == expected_type
    assert config["max_position_embeddings"] == (ORIGINAL if method == "dynamic" else TARGET)
    if expected_type == "longrope":
        assert config["rope_scaling"] == {**rope, "type": "longrope"}
        assert config["rope_theta"] == 10000.0
        for key in ("short_factor", "long_factor", "original_max_position_embeddings"):
            assert key in rope
    else:
        assert "rope_scaling" not in config
    if arch_name == "gpt_neox":
        assert rope["partial_rotary_factor"] == 0.5

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    patched = _patched(source, scaling)
    for length in (SHORT_INPUT, LONG_INPUT):
        torch.testing.assert_close(_logits(plain, length), _logits(patched, length), rtol=1e-5, atol=1e-5)
    # The comparison has teeth: the exported model really differs from the original beyond L0.
    unscaled = _logits(_patched(source, None), LONG_INPUT)
    assert (_logits(plain, LONG_INPUT) - unscaled).abs().max() > 1e-3


def test_export_writes_weights_tokenizer_and_a_yaml_that_round_trips(
    model_folders: dict[str, Path], tmp_path: Path
) -> None:
    scaling, out = _export(model_folders["llama"], "yarn", tmp_path / "exported")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", YAML_NAME} <= names
    assert "generation_config.json" not in names  # the source has none
    reloaded = RopeScaling.load(out / YAML_NAME)
    assert reloaded == scaling
    assert reloaded.provenance == scaling.provenance
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob(".*.old-*"))


def test_generation_config_is_kept_when_the_source_has_one(model_folders: dict[str, Path], tmp_path: Path) -> None:
    from transformers import GenerationConfig

    source = tmp_path / "with-generation-config"
    source.mkdir()
    for path in model_folders["llama"].iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    GenerationConfig(bos_token_id=1, eos_token_id=2, max_new_tokens=7).save_pretrained(source)
    _, out = _export(source, "pi", tmp_path / "exported")
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 7


def test_bf16_export(model_folders: dict[str, Path], tmp_path: Path) -> None:
    layout = read_layout(_config_of(model_folders["llama"]))
    out = export_model(str(model_folders["llama"]), _scaling(layout, "custom"), tmp_path / "bf16", dtype="bf16")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_phi3_refuses_dynamic_before_writing(model_folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RopextError, match="'phi3' does not accept rope type 'dynamic'"):
        _export(model_folders["phi3"], "dynamic", tmp_path / "exported")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_refused_unless_forced(model_folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RopextError, match="exists and is not empty; pass --force"):
        _export(model_folders["llama"], "pi", out)
    assert (out / "keep.txt").read_text() == "mine"
    layout = read_layout(_config_of(model_folders["llama"]))
    export_model(str(model_folders["llama"]), _scaling(layout, "yarn"), out, force=True)
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_type"] == "yarn"
    empty = tmp_path / "empty"
    empty.mkdir()
    _export(model_folders["llama"], "pi", empty)  # an empty folder needs no --force
    assert (empty / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "exported"]


def test_refuses_to_write_over_the_source(model_folders: dict[str, Path]) -> None:
    layout = read_layout(_config_of(model_folders["llama"]))
    with pytest.raises(RopextError, match="holds the source model"):
        export_model(str(model_folders["llama"]), _scaling(layout, "pi"), model_folders["llama"], force=True)


def test_refuses_start_tokens_before_loading(tmp_path: Path) -> None:
    scaling = dataclasses.replace(_scaling(LAYOUT, "yarn"), start_tokens=16)
    with pytest.raises(RopextError, match="search_start_tokens=false"):
        export_model(str(tmp_path / "no-such-model"), scaling, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["custom", "yarn"])
def test_per_layer_type_config_rescales_full_attention_only(
    method: str, model_folders: dict[str, Path], tmp_path: Path
) -> None:
    source = model_folders["gemma3"]
    before = json.loads((source / "config.json").read_text())["rope_parameters"]
    try:
        scaling, out = _export(source, method, tmp_path / "exported")
    except RopextError as err:
        # transformers 5.17's per-layer-type longrope fails on its second long input; export says so.
        if method == "custom" and "cannot run the exported config" in str(err):
            pytest.xfail(str(err))
        raise
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["sliding_attention"] == before["sliding_attention"]
    assert config["rope_parameters"]["full_attention"]["rope_type"] == NATIVE_TYPE[method]
    # Gemma 3 reads a legacy `rope_scaling` as its full-attention dict, other models as the whole dict:
    # none is written for per-layer-type configs.
    assert "rope_scaling" not in config
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    patched = _patched(source, scaling)
    for length in (SHORT_INPUT, LONG_INPUT):
        torch.testing.assert_close(_logits(plain, length), _logits(patched, length), rtol=1e-5, atol=1e-5)
    assert (_logits(plain, LONG_INPUT) - _logits(_patched(source, None), LONG_INPUT)).abs().max() > 1e-3


def test_a_config_that_does_not_reproduce_the_scaling_is_never_put_in_place(
    model_folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ropext.export

    def corrupt(config_path: Path) -> None:
        # transformers prefers the legacy key, so a wrong `rope_scaling` would silently win
        data = json.loads(config_path.read_text())
        rope = data["rope_parameters"]
        data["rope_scaling"] = {**rope, "long_factor": [2 * x for x in rope["long_factor"]], "type": "longrope"}
        config_path.write_text(json.dumps(data))

    monkeypatch.setattr(ropext.export, "_write_legacy_rope_scaling", corrupt)
    with pytest.raises(RopextError, match="the exported config does not reproduce the custom scaling"):
        _export(model_folders["llama"], "custom", tmp_path / "exported")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


def test_a_config_plain_transformers_cannot_run_is_refused(
    model_folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    calls = []
    forward = LlamaRotaryEmbedding.forward

    def second_long_input_fails(self, x, position_ids, *args, **kwargs):
        calls.append(int(position_ids.max()))
        if calls.count(TARGET - 1) > 1:
            raise RuntimeError("simulated\nsecond line")
        return forward(self, x, position_ids, *args, **kwargs)

    monkeypatch.setattr(LlamaRotaryEmbedding, "forward", second_long_input_fails)
    with pytest.raises(
        RopextError,
        match=r"cannot run the exported config: LlamaRotaryEmbedding fails on a 256-token "
        r"input \(RuntimeError: simulated\); export with a newer transformers",
    ):
        _export(model_folders["llama"], "custom", tmp_path / "exported")
    assert list(tmp_path.iterdir()) == []
