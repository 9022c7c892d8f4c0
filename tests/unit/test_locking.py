"""FileLock: fail at once by default, wait when asked; GGUF conversion happens once under concurrent loads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ropext.errors import RopextError
from ropext.locking import FileLock
from ropext.model import loading


def test_a_held_lock_refuses_a_second_run_at_once(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with FileLock(target), pytest.raises(RopextError, match="is in use by another run"):
        FileLock(target).acquire()


def test_a_waiting_lock_is_granted_when_the_holder_releases(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    events: list[str] = []
    first = FileLock(target).acquire()

    def second() -> None:
        with FileLock(target, wait=True):
            events.append("second acquired")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    events.append("first releases")  # the second is still waiting: flock conflicts between open files
    first.release()
    thread.join(timeout=10)
    assert events == ["first releases", "second acquired"]
    assert not target.with_name("folder.lock").exists()


def test_concurrent_loads_of_one_gguf_convert_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs started together (one per GPU) on a model not yet converted: one converts, the other waits
    and uses the same folder."""
    monkeypatch.setenv("ROPEXT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "model.gguf").write_bytes(b"not read: the conversion is replaced below")
    source = loading.ModelSource("model.gguf", str(tmp_path), "model.gguf")
    conversions: list[Path] = []

    def slow_convert(source: loading.ModelSource, folder: Path) -> None:
        conversions.append(folder)
        time.sleep(0.3)  # long enough for the other run to arrive while this one converts
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", slow_convert)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(loading.materialize(source).path)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(conversions) == 1
    assert results == [str(conversions[0])] * 2
