"""`ropext ls`, `ropext search` on a config-only model folder, and `ropext inspect` of what it wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from integration_support import HEAD_DIM, ORIGINAL_CONTEXT, PNG_MAGIC, ROPE_THETA, assert_ok, run_cli

import ropext
from ropext.methods import METHODS
from ropext.model.loading import load_layout
from ropext.scaling import RopeScaling

TARGET = "1k"
TARGET_TOKENS = 1024
METHOD_NAMES = ("none", "pi", "ntk", "dynamic", "yarn", "llama3", "dprope")
METHOD_ALIASES = {"pi": ("linear",)}
SPELLINGS = (*METHOD_NAMES, "linear")


def _listed_methods() -> dict[str, tuple[str, ...]]:
    """Method name -> aliases, read from the table `ropext ls` prints."""
    result = run_cli("ls")
    assert_ok(result)
    methods: dict[str, tuple[str, ...]] = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) >= 3 and cells[0] == "method":
            methods[cells[1]] = tuple(a.strip() for a in cells[2].split(",") if a.strip())
    return methods


def _search(model: Path, method: str, out: Path, *extra: str) -> RopeScaling:
    result = run_cli("search", "--model", model, "--method", method, "-t", TARGET, "--out", out, *extra)
    assert_ok(result)
    assert f"wrote {out}" in result.stdout
    return RopeScaling.load(out)


def test_ls_lists_exactly_the_methods_tested_here() -> None:
    listed = _listed_methods()
    assert sorted(listed) == sorted(METHOD_NAMES)
    assert {name: aliases for name, aliases in listed.items() if aliases} == METHOD_ALIASES


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_search_writes_a_scaling_that_loads(spelling: str, config_only_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / f"{spelling}.yaml"
    scaling = _search(config_only_model, spelling, out)

    assert scaling.method == METHODS.canonical(spelling)
    assert len(scaling.factors) == HEAD_DIM // 2
    assert scaling.rotary_dim == HEAD_DIM
    assert scaling.rope_theta == ROPE_THETA
    assert scaling.original_max_position_embeddings == ORIGINAL_CONTEXT
    assert scaling.max_position_embeddings == TARGET_TOKENS
    assert scaling.provenance["model"] == str(config_only_model)
    assert scaling.provenance["ropext_version"] == ropext.__version__
    assert scaling.provenance["method"] == METHODS.canonical(spelling)
    # The CLI writes what the library computes for this model's layout, bit for bit.
    _, layout = load_layout(str(config_only_model))
    expected = METHODS.get(spelling)(layout, TARGET_TOKENS)
    assert scaling.factors == expected.factors
    assert scaling.attention_factor == expected.attention_factor


def test_search_records_method_parameters(config_only_model: Path, tmp_path: Path) -> None:
    scaling = _search(config_only_model, "yarn", tmp_path / "yarn.yaml", "--param", "beta_fast=16")
    params = scaling.provenance["params"]
    assert params["beta_fast"] == 16.0
    assert params["beta_slow"] == 1.0  # defaults are recorded too


@pytest.fixture(scope="module")
def yarn_yaml(config_only_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "yarn.yaml"
    _search(config_only_model, "yarn", out)
    return out


def test_inspect_json_is_one_object_with_the_files_factors(yarn_yaml: Path) -> None:
    result = run_cli("inspect", yarn_yaml, "--json")
    assert_ok(result)
    report = json.loads(result.stdout)  # the whole of stdout is one JSON document
    scaling = RopeScaling.load(yarn_yaml)
    assert isinstance(report["disturbance"], float)
    assert math.isfinite(report["disturbance"])
    assert report["disturbance"] > 0  # 256 -> 1024 tokens changes the angle distribution
    assert report["factors"] == list(scaling.factors)
    assert report["method"] == "yarn"
    assert [pair["factor"] for pair in report["pairs"]] == list(scaling.factors)


def test_inspect_plot_writes_a_png(yarn_yaml: Path, tmp_path: Path) -> None:
    png = tmp_path / "plots" / "yarn.png"
    result = run_cli("inspect", yarn_yaml, "--plot", png)
    assert_ok(result)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "disturbance" in result.stdout  # the table is still printed
