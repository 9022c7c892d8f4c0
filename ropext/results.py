"""Result files of ``ropext eval``: written after every finished length, reused when a run resumes, read back
by ``ropext report`` (``read_result``); and the comparison summaries that gather several of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.locking import FileLock
from ropext.scaling import write_text_atomic


def result_header(task: str, prepared: Any, options: Any) -> dict[str, Any]:
    """What identifies a result file's run (task, model, scaling, options) and where it ran."""
    import dataclasses

    import torch

    from ropext import __version__

    device = str(prepared.device)
    return {
        "task": task,
        "model": prepared.source.spec,
        "scaling": prepared.scaling.to_dict() if prepared.scaling is not None else None,
        "options": dataclasses.asdict(options),
        "device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu",
        "dtype": str(next(prepared.model.parameters()).dtype).removeprefix("torch."),
        "ropext_version": __version__,
    }


class ResultFile:
    """``{"task", "model", "scaling", "options", "results": {length: {...}}, ...}`` kept on disk.

    A rerun of the same command (same task, model, scaling and options) continues where the last one
    stopped; a file from a different run is never overwritten. From its opening until ``close`` the file is
    locked (``FILE.lock``), so a second run on it fails at once; before every write the file is read again,
    so results another writer put there are kept, and a file taken over by a different run is refused.
    """

    def __init__(self, path: Path | None, header: dict[str, Any]) -> None:
        """Takes the lock and reads the file: a busy file or another run's fails here, before any work."""
        self.path = path
        self.header = header
        self.results: dict[str, Any] = {}
        self._lock = FileLock(path).acquire() if path is not None else None
        if path is not None:
            try:
                self.results = self._stored()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Release the lock (also released by the kernel if the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _identity(self, data: dict[str, Any]) -> dict[str, Any]:
        data = json.loads(json.dumps(data))  # compare as stored: tuples become lists, keys strings
        options = dict(data.get("options", {}))
        options.pop("lengths", None)  # more or fewer lengths is the same run, extended
        return {
            "task": data.get("task"),
            "model": data.get("model"),
            "scaling": data.get("scaling"),
            "options": options,
        }

    def _stored(self) -> dict[str, Any]:
        """The results the file holds now ({} when there is none); another run's file is refused."""
        assert self.path is not None
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            raise RopextError(f"--json {self.path} is a folder; give the path of a file") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RopextError(
                f"{self.path} exists but is not a ropext result file; choose another --json path"
            ) from None
        if not isinstance(data, dict) or self._identity(data) != self._identity(self.header):
            raise RopextError(
                f"{self.path} holds results of a different run (task, model, scaling or options differ); "
                "choose another --json path or delete it"
            )
        return dict(data.get("results", {}))

    def done(self) -> dict[str, Any]:
        return dict(self.results)

    def record(self, key: str, result: dict[str, Any]) -> None:
        self.results[key] = result
        self.write()

    def document(self) -> dict[str, Any]:
        return {**self.header, "results": self.results}

    def write(self) -> None:
        if self.path is None:
            return
        # Read again first: keep what is there that this run does not have, and never overwrite a file
        # that meanwhile became another run's.
        self.results = {**self._stored(), **self.results}
        write_text_atomic(self.path, json.dumps(self.document(), indent=2) + "\n")


RESULT_KEYS = ("task", "model", "scaling", "options", "results")
"""The keys every result file has (``ResultFile.document``)."""

COMPARISON_SUMMARY = "comparison-summary"
"""The ``kind`` of a file that gathers the numbers of other result files (``bench/eval_methods.py``'s
``summary.json``): ``{"kind": "comparison-summary", "methods": {method: {task: {length: result}}}}``."""

_LEGACY_SUMMARY_TASKS = ("ppl", "passkey", "ruler")
"""The tasks of result files when comparison summaries did not yet say what they are (no ``kind``)."""


@dataclass(frozen=True)
class ResultDoc:
    """One result file as read back (``ResultFile.document``), its shape checked."""

    path: Path
    task: str
    model: str
    scaling: dict[str, Any] | None
    options: dict[str, Any]
    results: dict[str, dict[str, Any]]
    device: str | None = None
    dtype: str | None = None


def comparison_summary(methods: dict[str, Any]) -> dict[str, Any]:
    """The document of a comparison summary: the numbers by method, and a ``kind`` that says what the file is,
    so a reader of result files recognises it without guessing from its shape."""
    return {"kind": COMPARISON_SUMMARY, "methods": methods}


def read_result(path: Path) -> ResultDoc | None:
    """The result file at ``path``; None for a comparison summary, whose numbers are other result files'.
    Anything else (missing, not JSON, not shaped like a result file) is a ``RopextError`` naming the file."""
    if not path.is_file():
        raise RopextError(f"result file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RopextError(
            f"{path} is not a ropext result file (not JSON); pass the --json files of `ropext eval`"
        ) from None
    if _is_comparison_summary(data):
        return None
    if not isinstance(data, dict) or any(key not in data for key in RESULT_KEYS):
        raise RopextError(
            f"{path} is not a ropext result file (it needs the keys {', '.join(RESULT_KEYS)}); "
            "pass the --json files of `ropext eval`"
        )
    return ResultDoc(
        path,
        data["task"],
        str(data["model"]),
        data["scaling"],
        data["options"],
        data["results"],
        data.get("device"),
        data.get("dtype"),
    )


def check_result_shape(doc: ResultDoc) -> None:
    """Its scaling and options are mappings, its results map lengths to results, its scaling has factors."""
    scaling, options, results = doc.scaling, doc.options, doc.results
    if not (scaling is None or isinstance(scaling, dict)) or not isinstance(options, dict):
        raise RopextError(f"{doc.path} is not a ropext result file: 'scaling' or 'options' is not a mapping")
    if not isinstance(results, dict) or not all(_is_length_key(k) and isinstance(v, dict) for k, v in results.items()):
        raise RopextError(f"{doc.path} is not a ropext result file: 'results' must map lengths to results")
    if scaling is not None and not isinstance(scaling.get("factors"), list):
        raise RopextError(f"{doc.path} is not a ropext result file: its scaling has no factors")


def _is_length_key(key: str) -> bool:
    return isinstance(key, str) and key.isdigit() and int(key) > 0


def _is_comparison_summary(data: Any) -> bool:
    """A file that says it is one (``kind``), or one written before summaries said so: ``{method: {task:
    {length: result}}}`` with no ``task`` key."""
    if not isinstance(data, dict):
        return False
    if "kind" in data:
        return data["kind"] == COMPARISON_SUMMARY
    return (
        "task" not in data
        and bool(data)
        and all(
            isinstance(tasks, dict)
            and tasks
            and all(
                t in _LEGACY_SUMMARY_TASKS and isinstance(r, dict) and all(map(_is_length_key, r))
                for t, r in tasks.items()
            )
            for tasks in data.values()
        )
    )
