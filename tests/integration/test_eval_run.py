"""`ropext eval run`: several tasks on one model load give the files the single-task commands give."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from integration_support import CorpusFiles, assert_clean_error, assert_ok, read_json, run_cli

PPL_ARGS = ("--max-docs", "2")
PASSKEY_ARGS = ("--depths", "0,1", "--trials", "1")
RULER_ARGS = ("--samples", "1", "--max-new-tokens", "4")
COMMON = ("--method", "yarn", "-t", "1k", "--device", "cpu")


@pytest.fixture(scope="module")
def run_dir(tiny_model: Path, corpus_files: CorpusFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval-run")
    result = run_cli(
        "eval", "run", "--model", tiny_model, "--tasks", "ppl,passkey,ruler", "--lengths", "256",
        "--corpus", corpus_files.folder, *PPL_ARGS, *PASSKEY_ARGS,
        "--ruler-tasks", "vt", "--ruler-lengths", "1024", *RULER_ARGS, *COMMON, "--json-dir", folder,
    )  # fmt: skip
    assert_ok(result)
    assert result.stdout.count("wrote ") == 3
    return folder


def _single(task: str, model: Path, json_out: Path, *args: str | Path) -> dict[str, Any]:
    assert_ok(run_cli("eval", task, "--model", model, *args, *COMMON, "--json", json_out))
    return read_json(json_out)


def _without_timing(document: dict[str, Any]) -> dict[str, Any]:
    """The document minus what differs between two identical runs (wall times)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("seconds", "seconds_per_window")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(document)


def test_writes_one_file_per_task(run_dir: Path) -> None:
    assert sorted(p.name for p in run_dir.iterdir()) == ["passkey.json", "ppl.json", "ruler.json"]
    for task in ("ppl", "passkey", "ruler"):
        document = read_json(run_dir / f"{task}.json")
        assert document["task"] == task
        assert document["scaling"]["method"] == "yarn"


def test_ppl_equals_eval_ppl(run_dir: Path, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    single = _single(
        "ppl", tiny_model, tmp_path / "ppl.json", "--corpus", corpus_files.folder, "--lengths", "256", *PPL_ARGS
    )
    combined = read_json(run_dir / "ppl.json")
    assert {k: v for k, v in combined.items() if k != "results"} == {k: v for k, v in single.items() if k != "results"}
    assert list(combined["results"]) == list(single["results"]) == ["256"]
    assert math.isclose(combined["results"]["256"]["ppl"], single["results"]["256"]["ppl"], rel_tol=1e-9)


def test_passkey_and_ruler_equal_their_commands(run_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    passkey = _single("passkey", tiny_model, tmp_path / "passkey.json", "--lengths", "256", *PASSKEY_ARGS)
    assert _without_timing(read_json(run_dir / "passkey.json")) == _without_timing(passkey)
    ruler = _single("ruler", tiny_model, tmp_path / "ruler.json", "--tasks", "vt", "--lengths", "1024", *RULER_ARGS)
    assert _without_timing(read_json(run_dir / "ruler.json")) == _without_timing(ruler)


def test_single_task_command_resumes_its_file(run_dir: Path, tiny_model: Path, corpus_files: CorpusFiles) -> None:
    before = read_json(run_dir / "ppl.json")
    after = _single(
        "ppl", tiny_model, run_dir / "ppl.json", "--corpus", corpus_files.folder, "--lengths", "256", *PPL_ARGS
    )
    assert after == before  # the same run: nothing recomputed, nothing lost


@pytest.mark.parametrize(
    ("tasks", "message"),
    [("ppl,pasky", "Did you mean 'passkey'"), ("rular", "Did you mean 'ruler'"), (",", "--tasks is empty")],
)
def test_unknown_task_fails_before_loading(tmp_path: Path, tasks: str, message: str) -> None:
    result = run_cli("eval", "run", "--model", tmp_path / "no-model", "--tasks", tasks, "--lengths", "256")
    assert_clean_error(result, message)
