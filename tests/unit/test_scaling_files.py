"""Scaling YAML as people write it by hand: exponent numbers without a dot (``1e3``), a target below the
original context, a folder where a file is expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling

HAND_WRITTEN = """\
schema_version: 1
method: custom
rope_theta: {theta}
rotary_dim: 4
original_max_position_embeddings: {original}
max_position_embeddings: {target}
factors: [{f0}, {f1}]
attention_factor: {attention}
"""


def _write(tmp_path: Path, **values: str) -> Path:
    fields = {"theta": "1e4", "original": "4096", "target": "16384", "f0": "1", "f1": "4", "attention": "1.0"}
    path = tmp_path / "hand.yaml"
    path.write_text(HAND_WRITTEN.format(**{**fields, **values}))
    return path


@pytest.mark.parametrize(
    ("written", "value"),
    [("1e3", 1000.0), ("1E3", 1000.0), ("2.5e3", 2500.0), ("1.0e+3", 1000.0), ("+1e-1", 0.1), (".5e1", 5.0)],
)
def test_exponent_numbers_without_a_dot_load_as_numbers(tmp_path: Path, written: str, value: float) -> None:
    scaling = RopeScaling.load(_write(tmp_path, f1=written, attention="1e0"))
    assert scaling.factors == (1.0, value)
    assert scaling.attention_factor == 1.0


def test_rope_theta_written_as_1e5_loads(tmp_path: Path) -> None:
    assert RopeScaling.load(_write(tmp_path, theta="1e5")).rope_theta == 100000.0


def test_the_yaml_reader_keeps_integers_and_words_as_they_were(tmp_path: Path) -> None:
    scaling = RopeScaling.load(_write(tmp_path, original="4096", target="16_384"))
    assert (scaling.original_max_position_embeddings, scaling.max_position_embeddings) == (4096, 16384)
    assert type(scaling.max_position_embeddings) is int
    # A word is still a word: the factor check names it.
    with pytest.raises(RopextError, match=r"factors\[1\] is 'e3'"):
        RopeScaling.load(_write(tmp_path, f1="e3"))


def test_pyyaml_safe_load_is_left_unchanged() -> None:
    # ropext's loader is a subclass: other YAML readers in the same process keep PyYAML's behaviour.
    assert yaml.safe_load("x: 1e3") == {"x": "1e3"}


@pytest.mark.parametrize(("original", "target"), [("8192", "4096"), ("8192", "8191")])
def test_a_target_below_the_original_context_is_refused(tmp_path: Path, original: str, target: str) -> None:
    with pytest.raises(
        RopextError, match=f"max_position_embeddings {target} is below original_max_position_embeddings"
    ):
        RopeScaling.load(_write(tmp_path, original=original, target=target))


def test_a_target_equal_to_the_original_context_is_accepted(tmp_path: Path) -> None:
    assert RopeScaling.load(_write(tmp_path, original="8192", target="8192")).scale == 1.0


def test_the_identity_method_below_the_original_context_records_the_original() -> None:
    layout = RotaryLayout("tiny", "llama", 16, 16, 10000.0, 4096)
    scaling = METHODS.get("none")(layout, 1024)
    assert scaling.max_position_embeddings == 4096
    assert scaling.is_identity


def test_a_folder_is_reported_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(RopextError, match="is a folder; give a scaling YAML file"):
        RopeScaling.load(tmp_path)
