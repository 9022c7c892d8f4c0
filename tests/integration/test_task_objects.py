"""A task is an object registered in TASKS: a plugin's task runs through `ropext eval run` and is listed by
`ropext ls` with no edit anywhere else (eval run does not branch on task names)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration_support import assert_clean_error, assert_ok, read_json, run_cli

from ropext.errors import RopextError
from ropext.evaluate import TASKS
from ropext.evaluate.task import Task


@dataclass(frozen=True)
class CountOptions:
    lengths: tuple[int, ...]
    repeat: int


def count_options(lengths: tuple[int, ...], *, trials: int = 5, **_other_tasks: Any) -> CountOptions:
    if trials > 3:
        raise RopextError(f"--trials {trials}: the counting task counts at most 3 times")
    return CountOptions(lengths=lengths, repeat=trials)


def count_tokens(prepared: Any, options: CountOptions, tracker: Any, done: dict[str, Any] | None = None) -> dict:
    """Encodes a sentence at each length: the vocabulary size and how often it was asked to count."""
    tracker.begin("count", len(options.lengths))
    results = {}
    for length in options.lengths:
        results[str(length)] = {"vocabulary": len(prepared.tokenizer), "counted": options.repeat}
        tracker.advance("count")
        tracker.finished(str(length), results[str(length)])
    return results


COUNT = Task(name="count", run=count_tokens, options=count_options, columns=("vocabulary", "counted"))


@pytest.fixture
def count_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Registered on copies of the registry's tables, so the task is gone after the test.
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    monkeypatch.setattr(TASKS, "_loaded", dict(TASKS._loaded))
    TASKS.register("count", COUNT, "counts tokens (a plugin's task)")
    yield


def test_a_registered_task_runs_through_eval_run(count_task: None, tiny_model: Path, tmp_path: Path) -> None:
    result = run_cli(
        "eval", "run", "--model", tiny_model, "--tasks", "count", "--lengths", "256,512", "--trials", "2",
        "--device", "cpu", "--json-dir", tmp_path,
    )  # fmt: skip
    assert_ok(result)
    document = read_json(tmp_path / "count.json")
    assert document["task"] == "count"
    assert set(document["results"]) == {"256", "512"}
    assert {entry["counted"] for entry in document["results"].values()} == {2}
    assert "vocabulary" in result.stdout and "counted" in result.stdout  # its own table columns


def test_a_registered_task_checks_its_options_before_the_model_loads(
    count_task: None, tiny_model: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "eval", "run", "--model", tiny_model, "--tasks", "count", "--lengths", "256", "--trials", "4",
        "--device", "cpu", "--json-dir", tmp_path,
    )  # fmt: skip
    assert_clean_error(result, "--trials 4: the counting task counts at most 3 times")
    assert "loading" not in result.stderr
    assert not (tmp_path / "count.json").exists()


def test_ls_lists_a_registered_task(count_task: None) -> None:
    result = run_cli("ls")
    assert_ok(result)
    assert "counts tokens (a plugin's task)" in result.stdout


def test_a_task_that_is_a_bare_function_is_refused_by_eval_run(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    TASKS.register("bare", count_tokens, "a function, not a Task")
    result = run_cli("eval", "run", "--model", tiny_model, "--tasks", "bare", "--lengths", "256")
    assert_clean_error(result, "run task 'bare' with its own command")
