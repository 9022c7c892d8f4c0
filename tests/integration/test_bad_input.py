"""Bad input through the real console entry point (`python -m ropext` in a subprocess): status 2, one
``error: ...`` line that names the problem, no traceback, no output file, nothing computed lost."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from integration_support import (
    CliResult,
    CorpusFiles,
    assert_clean_error,
    assert_ok,
    read_json,
    run_cli,
    run_cli_subprocess,
)

from ropext.methods import METHODS
from ropext.model.loading import load_layout


@dataclass(frozen=True)
class Inputs:
    model: Path
    config_only: Path
    gpt2: Path
    corpus: Path
    malformed_yaml: Path
    other_head_dim_yaml: Path
    valid_yaml: Path
    missing: Path
    """A path that does not exist."""


@pytest.fixture(scope="module")
def inputs(
    tiny_model: Path,
    config_only_model: Path,
    gpt2_model: Path,
    corpus_files: CorpusFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Inputs:
    folder = tmp_path_factory.mktemp("bad-input")
    malformed = folder / "malformed.yaml"
    malformed.write_text("factors: [1, 2\n")
    _, layout = load_layout(str(tiny_model))
    valid = folder / "valid.yaml"
    METHODS.get("yarn")(layout, 1024).save(valid)
    other_head_dim = folder / "head-dim-32.yaml"  # 16 factors; the tiny model rotates 16 dims (8 factors)
    METHODS.get("yarn")(replace(layout, head_dim=32, rotary_dim=32), 1024).save(other_head_dim)
    return Inputs(
        model=tiny_model,
        config_only=config_only_model,
        gpt2=gpt2_model,
        corpus=corpus_files.folder,
        malformed_yaml=malformed,
        other_head_dim_yaml=other_head_dim,
        valid_yaml=valid,
        missing=folder / "does-not-exist",
    )


def _search(model: Path, *extra: str) -> Callable[[Path], list[str | Path]]:
    return lambda out: ["search", "--model", model, "--out", out, *extra]


def _ppl(model: Path, corpus: Path, *extra: str | Path, lengths: str = "128") -> Callable[[Path], list[str | Path]]:
    return lambda out: [
        "eval", "ppl", "--model", model, "--corpus", corpus, "--lengths", lengths,
        "--max-docs", "1", "--device", "cpu", "--json", out, *extra,
    ]  # fmt: skip


# case id -> (arguments given the output path, fragments the error line must contain)
Case = tuple[Callable[[Inputs], Callable[[Path], list[str | Path]]], tuple[str, ...]]
CASES: dict[str, Case] = {
    "unknown method": (
        lambda i: _search(i.config_only, "--method", "yran", "-t", "1k"),
        ("unknown method 'yran'", "Did you mean 'yarn'"),
    ),
    "malformed yaml": (
        lambda i: _ppl(i.model, i.corpus, "--factors", i.malformed_yaml),
        ("not valid YAML", "malformed.yaml"),
    ),
    "yaml of another head dim": (
        lambda i: _ppl(i.model, i.corpus, "--factors", i.other_head_dim_yaml),
        ("16 factors", "(8 factors)", "head-dim-32.yaml"),
    ),
    "missing factors file": (
        lambda i: _ppl(i.model, i.corpus, "--factors", i.missing),
        ("does not exist", "does-not-exist"),
    ),
    "model without rope": (
        lambda i: _search(i.gpt2, "--method", "yarn", "-t", "1k"),
        ("RoPE", "gpt2"),
    ),
    "length no document has": (
        lambda i: _ppl(i.model, i.corpus, lengths="1m"),
        ("no document", "1048576"),
    ),
    "nonexistent model path": (
        lambda i: _search(i.missing, "--method", "yarn", "-t", "1k"),
        ("does not exist", "does-not-exist"),
    ),
    "unknown param": (
        lambda i: _search(i.config_only, "--method", "yarn", "-t", "1k", "--param", "beta_fastest=16"),
        ("no parameter 'beta_fastest'", "beta_fast"),
    ),
    "factors and method": (
        lambda i: _ppl(i.model, i.corpus, "--factors", i.valid_yaml, "--method", "yarn", "-t", "1k"),
        ("--factors", "--method", "not both"),
    ),
    "invalid length": (
        lambda i: _ppl(i.model, i.corpus, lengths="abc"),
        ("cannot read length 'abc'",),
    ),
    "target below original": (
        lambda i: _search(i.config_only, "--method", "yarn", "-t", "128"),
        ("shorter", "256"),
    ),
    "nonexistent corpus": (
        lambda i: _ppl(i.model, i.missing),
        ("corpus", "does not exist"),
    ),
    "config-only model for eval": (
        lambda i: _ppl(i.config_only, i.corpus),
        ("no weights",),
    ),
}


@pytest.fixture(scope="module")
def outcomes(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CliResult, Path]]:
    """Every case's run and its output path. The subprocesses are independent and mostly interpreter
    start-up, so they run side by side, one per CPU core."""
    folder = tmp_path_factory.mktemp("bad-input-outputs")

    def run(numbered: tuple[int, str]) -> tuple[CliResult, Path]:
        index, case = numbered
        out = folder / f"case-{index}.json"
        arguments, _ = CASES[case]
        return run_cli_subprocess(*arguments(inputs)(out)), out

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(CASES, pool.map(run, enumerate(CASES)), strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clean_error_line(case: str, outcomes: dict[str, tuple[CliResult, Path]]) -> None:
    result, out = outcomes[case]
    _, fragments = CASES[case]
    assert_clean_error(result, *fragments)
    assert not out.exists()  # a failed run writes no result or scaling file


def test_failed_rerun_keeps_finished_results(inputs: Inputs, tmp_path: Path) -> None:
    json_out = tmp_path / "kept.json"
    assert_ok(run_cli(*_ppl(inputs.model, inputs.corpus)(json_out)))
    before = json_out.read_bytes()
    assert "128" in read_json(json_out)["results"]
    result = run_cli_subprocess(*_ppl(inputs.model, inputs.corpus, lengths="128,999999")(json_out))
    assert_clean_error(result, "no document", "999999")
    assert json_out.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["search"], "Missing option '--method'"),
        (["search", "--model", "x", "--method", "pi", "-t", "8k", "--out", "f.yaml", "--bogus"], "No such option"),
        (["no-such-command"], "No such command"),
        (["eval", "ppl", "--model", "x", "--corpus", "y", "--lengths", "8k", "--max-docs", "abc"], "--max-docs"),
    ],
)
def test_command_line_mistakes_are_one_clean_error_line(args: list[str], fragment: str) -> None:
    assert_clean_error(run_cli_subprocess(*args), fragment)
