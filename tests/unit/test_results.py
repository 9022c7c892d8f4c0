"""ResultFile: resuming a run, refusing another run's file."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from ropext.errors import RopextError
from ropext.evaluate.passkey import PasskeyOptions
from ropext.results import ResultFile, comparison_summary, read_result


def _header(**options_changes) -> dict:
    options = dataclasses.replace(PasskeyOptions(lengths=(128, 256)), **options_changes)
    return {"task": "passkey", "model": "m", "scaling": None, "options": dataclasses.asdict(options)}


def test_a_rerun_with_tuple_options_resumes_from_the_stored_json(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with ResultFile(path, _header()) as first:
        first.record("128", {"accuracy": 0.5})
    # The options hold tuples (depths); the stored file holds lists. They are the same run.
    with ResultFile(path, _header(lengths=(128, 256, 512))) as again:
        assert again.done() == {"128": {"accuracy": 0.5}}


def test_another_runs_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with ResultFile(path, _header()) as store:
        store.record("128", {"accuracy": 0.5})
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


def test_a_file_in_use_by_another_run_is_refused_with_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with ResultFile(path, _header()) as first:
        first.record("128", {"accuracy": 0.5})
        assert (tmp_path / "r.json.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RopextError, match=rf"r\.json is in use by another run \(pid {os.getpid()}\)"):
            ResultFile(path, _header())
        first.record("256", {"accuracy": 1.0})
    # Released on close: the lock file is gone and the next run resumes.
    assert not (tmp_path / "r.json.lock").exists()
    with ResultFile(path, _header()) as again:
        assert set(again.done()) == {"128", "256"}


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    (tmp_path / "r.json.lock").write_text("999999\n")  # the file stays, the kernel dropped the dead run's lock
    with ResultFile(path, _header()) as store:
        store.record("128", {"accuracy": 0.5})
    assert json.loads(path.read_text())["results"] == {"128": {"accuracy": 0.5}}


def test_a_file_taken_over_by_a_different_run_is_refused_before_the_write(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with ResultFile(path, _header()) as store:
        store.record("128", {"accuracy": 0.5})
        # Meanwhile another run (one that ignored the lock) wrote its own results there.
        other = {**_header(trials=9), "results": {"128": {"accuracy": 0.0}}}
        path.write_text(json.dumps(other))
        with pytest.raises(RopextError, match="different run"):
            store.record("256", {"accuracy": 1.0})
    assert path.read_text() == json.dumps(other)


def test_results_another_writer_added_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with ResultFile(path, _header()) as store:
        store.record("128", {"accuracy": 0.5})
        data = json.loads(path.read_text())
        data["results"]["512"] = {"accuracy": 0.25}
        path.write_text(json.dumps(data))
        store.record("256", {"accuracy": 1.0})
    assert set(json.loads(path.read_text())["results"]) == {"128", "256", "512"}


def test_two_processes_on_one_file_one_is_refused(tmp_path: Path) -> None:
    """Two runs with different scalings and the same file: the second fails at once, the first's results stay."""
    import subprocess
    import sys

    path = tmp_path / "r.json"
    holder = (
        "import sys, time; from pathlib import Path; from ropext.results import ResultFile; "
        "store = ResultFile(Path(sys.argv[1]), {'task': 'ppl', 'model': 'm', 'scaling': None, 'options': {}}); "
        "store.record('128', {'ppl': 3.0}); print('locked', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", holder, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        with pytest.raises(RopextError, match=rf"in use by another run \(pid {process.pid}\)"):
            ResultFile(path, {"task": "ppl", "model": "m", "scaling": {"method": "yarn"}, "options": {}})
    finally:
        process.kill()
        process.wait()
    assert json.loads(path.read_text())["results"] == {"128": {"ppl": 3.0}}
    # Killed (-9): the kernel released its lock; a different run is now refused as one, not as busy.
    with pytest.raises(RopextError, match="different run"):
        ResultFile(path, {"task": "ppl", "model": "m", "scaling": {"method": "yarn"}, "options": {}})


def test_a_folder_as_the_result_file_is_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(RopextError, match="is a folder; give the path of a file"):
        ResultFile(folder, _header())
    assert not (tmp_path / "results.lock").exists()


def test_a_result_file_in_a_read_only_folder_is_one_clear_error(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(RopextError, match=r"cannot write beside .*ro/r\.json"):
            ResultFile(read_only / "r.json", _header())
    finally:
        read_only.chmod(0o755)


def _written(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_read_result_gives_the_document_of_a_result_file(tmp_path: Path) -> None:
    path = tmp_path / "passkey.json"
    with ResultFile(path, _header()) as results:
        results.record("128", {"accuracy": 0.5})
    doc = read_result(path)
    assert doc is not None
    assert (doc.path, doc.task, doc.model, doc.scaling) == (path, "passkey", "m", None)
    assert doc.results == {"128": {"accuracy": 0.5}}
    assert doc.options["lengths"] == [128, 256]


def test_a_comparison_summary_says_what_it_is_and_is_recognised(tmp_path: Path) -> None:
    # By its kind, whatever the numbers under it look like: a reader need not know the summary's shape.
    numbers = {"yarn": {"ppl": {"8192": {"ppl": 9.5}}}, "notes": "any shape"}
    assert read_result(_written(tmp_path, "summary.json", comparison_summary(numbers))) is None
    # Summaries written before they said what they are: {method: {task: {length: result}}}.
    assert read_result(_written(tmp_path, "old.json", {"yarn": {"ppl": {"8192": {"ppl": 9.5}}}})) is None


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "something-else", "yarn": {"ppl": {"8192": {}}}},  # another kind is not a summary
        {"yarn": {"mmlu": {"8192": {}}}},  # not a task a summary held
        {"yarn": {"ppl": {"8k": {}}}},  # not lengths
        {"loss": 1.0},
    ],
)
def test_anything_else_is_not_a_result_file(tmp_path: Path, data: dict) -> None:
    with pytest.raises(RopextError, match="is not a ropext result file"):
        read_result(_written(tmp_path, "other.json", data))
