"""ResultFile: resuming a run, refusing another run's file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ropext.errors import RopextError
from ropext.evaluate.passkey import PasskeyOptions
from ropext.results import ResultFile


def _header(**options_changes) -> dict:
    options = dataclasses.replace(PasskeyOptions(lengths=(128, 256)), **options_changes)
    return {"task": "passkey", "model": "m", "scaling": None, "options": dataclasses.asdict(options)}


def test_a_rerun_with_tuple_options_resumes_from_the_stored_json(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    first = ResultFile(path, _header())
    first.record("128", {"accuracy": 0.5})
    # The options hold tuples (depths); the stored file holds lists. They are the same run.
    again = ResultFile(path, _header(lengths=(128, 256, 512)))
    assert again.done() == {"128": {"accuracy": 0.5}}


def test_another_runs_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    ResultFile(path, _header()).record("128", {"accuracy": 0.5})
    before = path.read_text()
    with pytest.raises(RopextError, match="different run"):
        ResultFile(path, _header(trials=9))
    assert path.read_text() == before
    assert json.loads(before)["results"] == {"128": {"accuracy": 0.5}}


def test_a_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("not json")
    with pytest.raises(RopextError, match="not a ropext result file"):
        ResultFile(path, _header())
