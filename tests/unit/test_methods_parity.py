"""Closed-form methods: parity with transformers' own RoPE init functions, and each method's properties.

Parity compares ``METHODS.get(name)(layout, target).inv_freq()`` with
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type](config)`` over a grid of head dims,
bases, original lengths and scales; the config is a LlamaConfig whose ``rope_parameters`` carry the
method's parameters the way a checkpoint's config.json would.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropext.disturbance import pair_disturbance, total_disturbance
from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.layout import RotaryLayout, read_layout
from ropext.scaling import RopeScaling, original_inv_freq

HEAD_DIMS = (64, 128, 96)
BASES = (10000.0, 500000.0)
ORIGINALS = (2048, 4096, 8192)
SCALES = (2, 4, 8, 16)
GRID = list(itertools.product(HEAD_DIMS, BASES, ORIGINALS, SCALES))
GRID_IDS = [f"d{d}-b{b:g}-L{L}-s{s}" for d, b, L, s in GRID]

YARN_VARIANTS: list[dict[str, Any]] = [
    {},
    {"beta_fast": 16.0, "beta_slow": 2.0},
    {"beta_fast": 64.0, "beta_slow": 0.5, "truncate": False},
    {"truncate": False},
    {"attention_factor": 0.8},
    {"mscale": 1.0, "mscale_all_dim": 0.5},
    {"mscale": 0.707, "mscale_all_dim": 0.707},
]
LLAMA3_PARAMS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}

PARITY_RTOL = 2e-6


def _layout(head_dim: int, base: float, original: int, rotary_dim: int | None = None) -> RotaryLayout:
    return RotaryLayout(
        name="grid",
        model_type="llama",
        head_dim=head_dim,
        rotary_dim=rotary_dim or head_dim,
        rope_theta=base,
        original_max_position_embeddings=original,
    )


def _config(head_dim: int, max_position_embeddings: int, rope_parameters: dict[str, Any]) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=16,
        hidden_size=4 * head_dim,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=rope_parameters,
    )


def _reference(rope_type: str, config: LlamaConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    inv_freq, attention = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), seq_len=seq_len)
    return inv_freq, float(attention)


def _assert_parity(scaling: RopeScaling, reference: tuple[torch.Tensor, float], seq_len: int | None = None) -> None:
    expected_inv_freq, expected_attention = reference
    got = scaling.inv_freq(seq_len)
    assert got.dtype == torch.float32
    assert expected_inv_freq.dtype == torch.float32
    torch.testing.assert_close(got, expected_inv_freq, rtol=PARITY_RTOL, atol=0)
    assert math.isclose(scaling.attention_factor, expected_attention, rel_tol=1e-6)


def _static_rope_parameters(rope_type: str, base: float, original: int, scale: float, **params: Any) -> dict:
    rope: dict[str, Any] = {"rope_type": rope_type, "rope_theta": base, "factor": float(scale), **params}
    if rope_type != "linear":  # linear takes no original length and warns about unknown keys
        rope["original_max_position_embeddings"] = original
    return rope


# ---------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID, ids=GRID_IDS)
def test_pi_matches_transformers_linear(head_dim: int, base: float, original: int, scale: int) -> None:
    target = original * scale
    config = _config(head_dim, target, _static_rope_parameters("linear", base, original, scale))
    scaling = METHODS.get("pi")(_layout(head_dim, base, original), target)
    _assert_parity(scaling, _reference("linear", config))


@pytest.mark.parametrize("params", YARN_VARIANTS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default")
@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID, ids=GRID_IDS)
def test_yarn_matches_transformers(
    head_dim: int, base: float, original: int, scale: int, params: dict[str, Any]
) -> None:
    target = original * scale
    config = _config(head_dim, target, _static_rope_parameters("yarn", base, original, scale, **params))
    scaling = METHODS.get("yarn")(_layout(head_dim, base, original), target, **params)
    _assert_parity(scaling, _reference("yarn", config))


@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID, ids=GRID_IDS)
def test_llama3_matches_transformers(head_dim: int, base: float, original: int, scale: int) -> None:
    target = original * scale
    config = _config(head_dim, target, _static_rope_parameters("llama3", base, original, scale, **LLAMA3_PARAMS))
    scaling = METHODS.get("llama3")(_layout(head_dim, base, original), target, **LLAMA3_PARAMS)
    _assert_parity(scaling, _reference("llama3", config))


def test_llama3_matches_transformers_with_other_bands() -> None:
    params = {"low_freq_factor": 2.0, "high_freq_factor": 8.0}
    config = _config(128, 8192 * 8, _static_rope_parameters("llama3", 500000.0, 8192, 8, **params))
    scaling = METHODS.get("llama3")(_layout(128, 500000.0, 8192), 8192 * 8, **params)
    _assert_parity(scaling, _reference("llama3", config))


@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID, ids=GRID_IDS)
def test_dynamic_matches_transformers_at_every_length(head_dim: int, base: float, original: int, scale: int) -> None:
    # transformers' dynamic type measures the input against config.max_position_embeddings (L0 here).
    target = original * scale
    config = _config(head_dim, original, {"rope_type": "dynamic", "rope_theta": base, "factor": float(scale)})
    scaling = METHODS.get("dynamic")(_layout(head_dim, base, original), target)
    unscaled = original_inv_freq(base, head_dim)
    for seq_len in (original // 2, original, 2 * original, target):
        _assert_parity(scaling, _reference("dynamic", config, seq_len=seq_len), seq_len=seq_len)
        if seq_len <= original:
            assert torch.equal(scaling.inv_freq(seq_len), unscaled)
    # Its stored factors are the ones at the target length.
    assert torch.equal(scaling.inv_freq(), scaling.inv_freq(target))


PARTIAL_CASES = [
    ("pi", "linear", {}),
    ("yarn", "yarn", {}),
    ("yarn", "yarn", {"beta_fast": 16.0, "truncate": False}),
    ("llama3", "llama3", LLAMA3_PARAMS),
]


@pytest.mark.parametrize(("method", "rope_type", "params"), PARTIAL_CASES)
def test_partial_rotary_matches_transformers(method: str, rope_type: str, params: dict[str, Any]) -> None:
    head_dim, base, original, scale = 128, 10000.0, 4096, 4
    rope = _static_rope_parameters(rope_type, base, original, scale, partial_rotary_factor=0.25, **params)
    config = _config(head_dim, original * scale, rope)
    unscaled = _config(head_dim, original, {"rope_type": "default", "rope_theta": base, "partial_rotary_factor": 0.25})
    assert read_layout(unscaled).rotary_dim == head_dim // 4
    layout = _layout(head_dim, base, original, rotary_dim=head_dim // 4)
    scaling = METHODS.get(method)(layout, original * scale, **params)
    assert len(scaling.factors) == head_dim // 8
    _assert_parity(scaling, _reference(rope_type, config))


def test_partial_rotary_dynamic_matches_transformers() -> None:
    head_dim, base, original, scale = 128, 10000.0, 4096, 4
    rope = {"rope_type": "dynamic", "rope_theta": base, "factor": float(scale), "partial_rotary_factor": 0.25}
    config = _config(head_dim, original, rope)
    scaling = METHODS.get("dynamic")(_layout(head_dim, base, original, rotary_dim=32), original * scale)
    for seq_len in (original, 3 * original, original * scale):
        _assert_parity(scaling, _reference("dynamic", config, seq_len=seq_len), seq_len=seq_len)


# ---------------------------------------------------------------- properties of each method


def _factors(method: str, layout: RotaryLayout, target: int, **params: Any) -> list[float]:
    return list(METHODS.get(method)(layout, target, **params).factors)


def _non_decreasing(values: list[float]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID[::5])
def test_pi_divides_every_pair_by_the_scale(head_dim: int, base: float, original: int, scale: int) -> None:
    factors = _factors("pi", _layout(head_dim, base, original), original * scale)
    assert factors == [float(scale)] * (head_dim // 2)


def test_pi_factor_parameter_overrides_the_ratio() -> None:
    assert set(_factors("pi", _layout(64, 1e4, 4096), 16384, factor=2.5)) == {2.5}


@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID[::5])
def test_ntk_keeps_fastest_pair_and_scales_slowest_by_s(head_dim: int, base: float, original: int, scale: int) -> None:
    factors = _factors("ntk", _layout(head_dim, base, original), original * scale)
    assert factors[0] == 1.0
    assert math.isclose(factors[-1], scale, rel_tol=1e-12, abs_tol=0)
    assert _non_decreasing(factors)
    assert factors[1] > 1.0


def test_yarn_ramps_from_kept_to_interpolated() -> None:
    scale = 4
    factors = _factors("yarn", _layout(64, 1e5, 8192), 8192 * scale)
    assert factors[0] == 1.0
    assert factors[-1] == scale
    assert all(1.0 <= x <= scale for x in factors)
    assert _non_decreasing(factors)
    assert any(1.0 < x < scale for x in factors)  # a real ramp, not a step


@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID[::3])
def test_yarn_and_llama3_stay_within_one_and_s(head_dim: int, base: float, original: int, scale: int) -> None:
    layout = _layout(head_dim, base, original)
    for factors in (
        _factors("yarn", layout, original * scale),
        _factors("llama3", layout, original * scale, **LLAMA3_PARAMS),
    ):
        assert all(1.0 <= x <= scale * (1 + 1e-12) for x in factors)
        assert _non_decreasing(factors)


def test_yarn_default_attention_factor() -> None:
    scaling = METHODS.get("yarn")(_layout(64, 1e4, 4096), 4096 * 8)
    assert math.isclose(scaling.attention_factor, 0.1 * math.log(8) + 1.0, rel_tol=1e-12)


def test_none_keeps_every_pair() -> None:
    scaling = METHODS.get("none")(_layout(96, 1e4, 4096), 16384)
    assert scaling.factors == (1.0,) * 48
    assert scaling.is_identity


# ---------------------------------------------------------------- DPRoPE

LLAMA2 = _layout(128, 10000.0, 4096)


def _dprope_gain(layout: RotaryLayout, target: int) -> torch.Tensor:
    """D_i(extrapolate) − D_i(interpolate) per pair."""
    original = original_inv_freq(layout.rope_theta, layout.rotary_dim)
    scale = target / layout.original_max_position_embeddings
    l0 = layout.original_max_position_embeddings
    d_ext = pair_disturbance(original, original, l0, target)
    d_int = pair_disturbance(original, original / scale, l0, target)
    return d_ext - d_int


@pytest.mark.parametrize("target", [8192, 16384])
@pytest.mark.parametrize("t", [0.0, 0.01, 0.5])
def test_dprope_chooses_per_pair_by_the_rule(target: int, t: float) -> None:
    scale = target / 4096
    factors = _factors("dprope", LLAMA2, target, t=t)
    assert set(factors) <= {1.0, scale}
    expected = [scale if gain > t else 1.0 for gain in _dprope_gain(LLAMA2, target).tolist()]
    assert factors == expected


def test_dprope_default_mixes_both_choices() -> None:
    factors = _factors("dprope", LLAMA2, 8192)
    assert factors.count(1.0) > 0
    assert factors.count(2.0) > 0


def test_dprope_large_threshold_keeps_everything() -> None:
    assert _factors("dprope", LLAMA2, 16384, t=1e9) == [1.0] * 64


@pytest.mark.parametrize("dims", [0, 2, 10, 64, 128])
def test_dprope_interpolated_dims_picks_the_best_pairs(dims: int) -> None:
    factors = _factors("dprope", LLAMA2, 16384, interpolated_dims=dims)
    chosen = [i for i, x in enumerate(factors) if x == 4.0]
    assert len(chosen) == dims // 2
    assert factors.count(1.0) == 64 - dims // 2
    gain = _dprope_gain(LLAMA2, 16384)
    rest = [i for i in range(64) if i not in chosen]
    if chosen and rest:
        assert min(gain[chosen].tolist()) >= max(gain[rest].tolist())


@pytest.mark.parametrize("params", [{"interpolated_dims": 3}, {"interpolated_dims": 130}, {"intervals": 1}])
def test_dprope_rejects_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(RopextError):
        METHODS.get("dprope")(LLAMA2, 8192, **params)


def _total_disturbance(scaling: RopeScaling) -> float:
    original = original_inv_freq(scaling.rope_theta, scaling.rotary_dim)
    per_pair = pair_disturbance(
        original,
        scaling.inv_freq(),
        scaling.original_max_position_embeddings,
        scaling.max_position_embeddings,
    )
    return total_disturbance(per_pair)


# DPRoPE paper, Table 3: total disturbance of LLaMA2 (d=128, θ=1e4, L0=4096) extended to 8k and 16k.
PAPER_TABLE_3 = [
    ("pi", 8192, 24.08, 0.1),
    ("pi", 16384, 33.67, 0.1),
    ("yarn", 8192, 25.55, 0.15),
    ("yarn", 16384, 35.44, 0.1),
    ("dprope", 8192, 6.71, 0.1),
    ("dprope", 16384, 22.92, 0.1),
]


@pytest.mark.parametrize(("method", "target", "expected", "tolerance"), PAPER_TABLE_3)
def test_total_disturbance_reproduces_dprope_table_3(
    method: str, target: int, expected: float, tolerance: float
) -> None:
    scaling = METHODS.get(method)(LLAMA2, target)
    assert abs(_total_disturbance(scaling) - expected) <= tolerance


def test_unscaled_rope_has_zero_disturbance_at_its_own_length() -> None:
    scaling = METHODS.get("none")(LLAMA2, 4096)
    assert _total_disturbance(scaling) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- running and parameters


@pytest.mark.parametrize("method", ["pi", "ntk", "dynamic", "yarn", "llama3", "dprope"])
def test_target_below_original_is_refused(method: str) -> None:
    with pytest.raises(RopextError, match="shorter than model grid's original context 4096"):
        METHODS.get(method)(_layout(64, 1e4, 4096), 2048)


def test_run_records_provenance() -> None:
    scaling = METHODS.get("yarn")(_layout(64, 1e4, 4096), 8192, beta_fast=16.0)
    assert scaling.provenance["method"] == "yarn"
    assert scaling.provenance["params"]["beta_fast"] == 16.0
    assert scaling.provenance["params"]["beta_slow"] == 1.0
    assert scaling.max_position_embeddings == 8192
    assert scaling.method == "yarn"


def test_unknown_param_lists_the_parameters() -> None:
    with pytest.raises(RopextError) as info:
        METHODS.get("yarn").parse_params(["nope=1"])
    message = str(info.value)
    assert "method 'yarn' has no parameter 'nope'" in message
    for name in ("factor", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"):
        assert name in message


def test_parse_params_converts_types() -> None:
    params = METHODS.get("yarn").parse_params(["truncate=false", "beta_fast=16", " beta_slow = 2 ", "factor=none"])
    assert params.truncate is False
    assert params.beta_fast == 16.0
    assert type(params.beta_fast) is float
    assert params.beta_slow == 2.0
    assert params.factor is None


def test_parse_params_converts_optional_ints() -> None:
    params = METHODS.get("dprope").parse_params(["interpolated_dims=12", "intervals=90", "t=0.5"])
    assert params.interpolated_dims == 12
    assert type(params.interpolated_dims) is int
    assert params.intervals == 90
    assert params.t == 0.5


@pytest.mark.parametrize(
    ("pair", "fragment"),
    [
        ("truncate=maybe", "expected bool"),
        ("beta_fast=fast", "expected float"),
        ("beta_fast", "not of the form key=value"),
    ],
)
def test_parse_params_rejects_bad_values(pair: str, fragment: str) -> None:
    with pytest.raises(RopextError, match=fragment):
        METHODS.get("yarn").parse_params([pair])


def test_method_without_parameters_says_so() -> None:
    with pytest.raises(RopextError, match="its parameters are: none"):
        METHODS.get("dynamic").parse_params(["factor=2"])
