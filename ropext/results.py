"""Result files of ``ropext eval``: written after every finished length, reused when a run resumes."""

from __future__ import annotations

import json
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
