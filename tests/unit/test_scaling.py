"""RopeScaling: YAML round trip and layout, validation messages, compatibility checks, frequencies."""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ropext.errors import RopextError
from ropext.model.layout import RotaryLayout
from ropext.scaling import YAML_KEYS, RopeScaling

# Values that stress float round trips: non-monotone, non-terminating binary fractions, tiny and huge.
ODD_FACTORS = (1.0, 3.7, 0.1 + 0.2, 1 / 3, 1.0000000000000002e-3, 987654.3210987654, 2.5, math.pi)


def _scaling(**changes: Any) -> RopeScaling:
    values: dict[str, Any] = {
        "method": "custom",
        "rope_theta": 10000.0,
        "rotary_dim": 16,
        "original_max_position_embeddings": 4096,
        "max_position_embeddings": 16384,
        "factors": ODD_FACTORS,
        "short_factors": (1.0, 1.0, 1.1, 1.2, 0.9, 1.0, 1.5, 2.0),
        "attention_factor": 1.1386294361119891,
        "start_tokens": 4,
        "provenance": {"searcher": "evolution", "score": 3.25, "params": {"population": [8, 16]}},
    }
    values.update(changes)
    return RopeScaling(**values)


def _layout(**changes: Any) -> RotaryLayout:
    values: dict[str, Any] = {
        "name": "tiny-llama",
        "model_type": "llama",
        "head_dim": 16,
        "rotary_dim": 16,
        "rope_theta": 10000.0,
        "original_max_position_embeddings": 4096,
    }
    values.update(changes)
    return RotaryLayout(**values)


def _bits(values: tuple[float, ...] | None) -> list[bytes] | None:
    return None if values is None else [struct.pack("<d", x) for x in values]


def _data(**changes: Any) -> dict[str, Any]:
    data = _scaling().to_dict()
    data.update(changes)
    return data


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "factors.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- YAML round trip


def test_yaml_round_trip_is_exact(tmp_path: Path) -> None:
    scaling = _scaling()
    path = tmp_path / "sub" / "factors.yaml"
    scaling.save(path)
    loaded = RopeScaling.load(path)
    assert loaded == scaling
    assert _bits(loaded.factors) == _bits(scaling.factors)
    assert _bits(loaded.short_factors) == _bits(scaling.short_factors)
    assert loaded.attention_factor == scaling.attention_factor
    assert loaded.start_tokens == 4
    assert loaded.provenance == scaling.provenance  # provenance is excluded from ==, so check it apart


def test_yaml_round_trip_without_optional_values(tmp_path: Path) -> None:
    scaling = _scaling(short_factors=None, start_tokens=0, attention_factor=1.0, provenance={})
    scaling.save(tmp_path / "f.yaml")
    loaded = RopeScaling.load(tmp_path / "f.yaml")
    assert loaded == scaling
    assert loaded.short_factors is None
    assert loaded.provenance == {}


def test_yaml_keys_are_in_documented_order_with_schema_version_first() -> None:
    text = _scaling().to_yaml()
    top_level = [line.split(":", 1)[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top_level == YAML_KEYS
    assert top_level[0] == "schema_version"
    assert text.startswith("schema_version: 1\n")


def test_yaml_factor_lists_are_one_flow_line_each() -> None:
    text = _scaling().to_yaml()
    lines = text.splitlines()
    factors_line = next(line for line in lines if line.startswith("factors:"))
    short_line = next(line for line in lines if line.startswith("short_factors:"))
    assert factors_line.startswith("factors: [") and factors_line.endswith("]")
    assert short_line.startswith("short_factors: [") and short_line.endswith("]")
    assert yaml.safe_load(factors_line)["factors"] == list(ODD_FACTORS)
    # The provenance mapping stays in block style.
    assert "provenance:\n  searcher: evolution\n" in text


def test_integer_factors_in_yaml_load_as_floats(tmp_path: Path) -> None:
    path = _write(tmp_path, yaml.safe_dump(_data(factors=[1, 2, 3, 4, 5, 6, 7, 8], short_factors=None)))
    loaded = RopeScaling.load(path)
    assert loaded.factors == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    assert all(type(x) is float for x in loaded.factors)


def test_null_provenance_loads_as_empty_mapping() -> None:
    assert RopeScaling.from_dict(_data(provenance=None)).provenance == {}


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"factors": (1.0,) * 7}, ["factors has 7 entries", "rotary_dim 16 needs 8"]),
        ({"short_factors": (1.0,) * 9}, ["short_factors has 9 entries", "needs 8"]),
        ({"factors": (1.0, 0.0, *(1.0,) * 6)}, ["factors[1] is 0.0", "positive"]),
        ({"factors": (*(1.0,) * 7, -2.0)}, ["factors[7] is -2.0", "positive"]),
        ({"factors": (1.0, 1.0, float("nan"), *(1.0,) * 5)}, ["factors[2] is nan", "positive"]),
        ({"factors": (float("inf"), *(1.0,) * 7)}, ["factors[0] is inf"]),
        ({"short_factors": (1.0, -1.0, *(1.0,) * 6)}, ["short_factors[1] is -1.0"]),
        ({"rotary_dim": 15}, ["rotary_dim must be an even integer"]),
        ({"rope_theta": 1.0}, ["rope_theta must be a number > 1"]),
        ({"method": ""}, ["method must be a non-empty name"]),
        ({"max_position_embeddings": 0}, ["max_position_embeddings must be a positive integer"]),
        ({"original_max_position_embeddings": 4096.0}, ["original_max_position_embeddings must be a positive"]),
        ({"attention_factor": 0.0}, ["attention_factor must be a positive number"]),
        ({"attention_factor": float("nan")}, ["attention_factor must be a positive number"]),
        ({"start_tokens": -1}, ["start_tokens must be an integer >= 0"]),
        ({"factors": (1.0e-300, *(1.0,) * 7)}, ["factors[0] is 1e-300", "[0.001, 1e+06]"]),
        ({"factors": (*(1.0,) * 7, 1.0e308)}, ["factors[7] is 1e+308", "[0.001, 1e+06]"]),
        ({"factors": (1.0, 9.9e-4, *(1.0,) * 6)}, ["factors[1] is 0.00099", "[0.001, 1e+06]"]),
        ({"short_factors": (1.0, 1.1e6, *(1.0,) * 6)}, ["short_factors[1] is 1100000.0", "[0.001, 1e+06]"]),
        ({"attention_factor": 1e-300}, ["attention_factor is 1e-300", "[0.01, 100]"]),
        ({"attention_factor": 101.0}, ["attention_factor is 101.0", "[0.01, 100]"]),
        ({"method": "dynamic"}, ["dynamic scaling", "no short_factors or start_tokens"]),
    ],
)
def test_invalid_values_raise_helpful_errors(changes: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(RopextError) as info:
        _scaling(**changes)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"factors": [1.0] * 3}, ["factors has 3 entries"]),
        ({"factors": [1.0, 0, 1, 1, 1, 1, 1, 1]}, ["factors[1] is 0.0"]),
        ({"factors": [-1.0] * 8}, ["factors[0] is -1.0"]),
        ({"factors": 2.0}, ["factors must be a list of numbers"]),
        ({"schema_version": 2}, ["unsupported schema_version 2", "reads version 1"]),
        ({"colour": "blue"}, ["unknown key 'colour'", "the keys are schema_version, method"]),
    ],
)
def test_invalid_files_raise_errors_naming_the_file(
    tmp_path: Path, changes: dict[str, Any], fragments: list[str]
) -> None:
    path = _write(tmp_path, yaml.safe_dump(_data(**changes)))
    with pytest.raises(RopextError) as info:
        RopeScaling.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_nan_factor_in_yaml_is_rejected(tmp_path: Path) -> None:
    text = _scaling(short_factors=None).to_yaml().replace("factors: [1.0,", "factors: [.nan,", 1)
    with pytest.raises(RopextError, match=r"factors\[0\] is nan"):
        RopeScaling.load(_write(tmp_path, text))


@pytest.mark.parametrize("key", ["factors", "method", "rope_theta", "rotary_dim", "max_position_embeddings"])
def test_missing_required_key_is_named(key: str) -> None:
    data = _data()
    del data[key]
    with pytest.raises(RopextError, match=f"missing key '{key}'"):
        RopeScaling.from_dict(data, source="f.yaml")


@pytest.mark.parametrize("key", ["short_factors", "attention_factor", "start_tokens", "provenance"])
def test_optional_keys_may_be_left_out(key: str) -> None:
    data = _data()
    del data[key]
    loaded = RopeScaling.from_dict(data)
    assert loaded.factors == ODD_FACTORS


def test_non_mapping_yaml_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "- 1.0\n- 2.0\n")
    with pytest.raises(RopextError, match=r"expected a mapping .* got list"):
        RopeScaling.load(path)


def test_malformed_yaml_reports_not_valid_yaml_with_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "schema_version: 1\nfactors: [1.0, 2.0\nmethod: pi\n")
    with pytest.raises(RopextError) as info:
        RopeScaling.load(path)
    assert "not valid YAML" in str(info.value)
    assert str(path) in str(info.value)
    assert "at line" in str(info.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RopextError, match="does not exist") as info:
        RopeScaling.load(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- compatibility


@pytest.mark.parametrize(
    ("layout_changes", "fragments"),
    [
        ({"rotary_dim": 32, "head_dim": 32}, ["rotary_dim 16", "rotates 32 dims per head (16 factors)"]),
        ({"rope_theta": 500000.0}, ["rope_theta is 10000", "model's is 500000"]),
        ({"original_max_position_embeddings": 8192}, ["original_max_position_embeddings is 4096", "model's is 8192"]),
    ],
)
def test_check_matches_refuses_another_layout(layout_changes: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(RopextError) as info:
        _scaling().check_matches(_layout(**layout_changes), source="factors.yaml")
    message = str(info.value)
    assert message.startswith("factors.yaml does not fit model tiny-llama")
    for fragment in fragments:
        assert fragment in message


def test_check_matches_accepts_its_own_layout() -> None:
    _scaling().check_matches(_layout())
    _scaling().check_matches(_layout(rope_theta=10000.0 * (1 + 1e-9)))


# ---------------------------------------------------------------- frequencies


def _reference_inv_freq(theta: float, rotary_dim: int, factors: tuple[float, ...]) -> torch.Tensor:
    values = [1.0 / (lam * theta ** (2 * i / rotary_dim)) for i, lam in enumerate(factors)]
    return torch.tensor(values, dtype=torch.float64)


def test_inv_freq_is_float32_and_matches_the_formula() -> None:
    scaling = _scaling()
    inv_freq = scaling.inv_freq()
    assert inv_freq.dtype == torch.float32
    assert inv_freq.shape == (8,)
    expected = _reference_inv_freq(10000.0, 16, ODD_FACTORS)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=5e-7, atol=0)


def test_short_factors_apply_up_to_the_original_length() -> None:
    scaling = _scaling()
    short = _reference_inv_freq(10000.0, 16, scaling.short_factors or ())
    long = _reference_inv_freq(10000.0, 16, ODD_FACTORS)
    for seq_len in (1, 4095, 4096):
        assert scaling.factors_for(seq_len) == scaling.short_factors
        torch.testing.assert_close(scaling.inv_freq(seq_len).double(), short, rtol=5e-7, atol=0)
    for seq_len in (None, 4097, 16384, 100000):
        assert scaling.factors_for(seq_len) == ODD_FACTORS
        torch.testing.assert_close(scaling.inv_freq(seq_len).double(), long, rtol=5e-7, atol=0)


def test_without_short_factors_the_long_vector_is_used_everywhere() -> None:
    scaling = _scaling(short_factors=None)
    assert scaling.factors_for(10) == ODD_FACTORS
    assert torch.equal(scaling.inv_freq(10), scaling.inv_freq())


def test_scale_and_identity() -> None:
    assert _scaling().scale == 4.0
    identity = _scaling(factors=(1.0,) * 8, short_factors=None, attention_factor=1.0)
    assert identity.is_identity
    assert not dataclasses.replace(identity, attention_factor=1.1).is_identity
    assert not dataclasses.replace(identity, short_factors=(1.0,) * 7 + (2.0,)).is_identity


def test_with_provenance_merges_and_keeps_the_original() -> None:
    scaling = _scaling(provenance={"a": 1})
    merged = scaling.with_provenance(b=2, a=3)
    assert merged.provenance == {"a": 3, "b": 2}
    assert scaling.provenance == {"a": 1}
    assert merged == scaling


# ---------------------------------------------------------------- atomic save


def test_save_leaves_only_the_target_file(tmp_path: Path) -> None:
    path = tmp_path / "factors.yaml"
    _scaling().save(path)
    _scaling(start_tokens=8).save(path)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["factors.yaml"]
    assert RopeScaling.load(path).start_tokens == 8


def test_failed_save_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "factors.yaml"
    _scaling().save(path)
    before = path.read_text()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        _scaling(start_tokens=99).save(path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["factors.yaml"]


def test_factor_vectors_must_hold_numbers_not_strings_or_booleans() -> None:
    for bad in (["2"] * 4, [True] * 4):
        with pytest.raises(RopextError, match=r"factors\[0\]"):
            RopeScaling(
                method="x",
                rope_theta=1e4,
                rotary_dim=8,
                original_max_position_embeddings=16,
                max_position_embeddings=32,
                factors=bad,
            )


def test_a_file_without_schema_version_reports_the_missing_key(tmp_path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "method: pi\nrope_theta: 10000.0\nrotary_dim: 4\noriginal_max_position_embeddings: 8\n"
        "max_position_embeddings: 16\nfactors: [2.0, 2.0]\n"
    )
    with pytest.raises(RopextError, match="missing key 'schema_version'"):
        RopeScaling.load(path)


def test_factors_at_the_bounds_are_accepted_and_inspect_stays_finite() -> None:
    from ropext.inspection import describe

    edge = _scaling(factors=(1e-3, 1e6, 1.0, 1.0, 1.0, 1.0, 1.0, 1e6), short_factors=None, attention_factor=100.0)
    report = describe(edge, intervals=36)
    assert math.isfinite(report["disturbance"])
    assert all(math.isfinite(pair["scaled_wavelength"]) for pair in report["pairs"])


def test_binary_file_as_yaml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    with pytest.raises(RopextError, match=r"image.yaml is not a text file \(not UTF-8\)"):
        RopeScaling.load(path)
