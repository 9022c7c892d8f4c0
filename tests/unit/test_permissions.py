"""Files and folders written through a temporary name get the permissions the user's umask gives, as ``open``
and ``mkdir`` would, not mkstemp's private 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ropext.permissions import current_umask, new_file_mode, new_folder_mode
from ropext.scaling import write_text_atomic


@pytest.fixture
def umask() -> Iterator[int]:
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_umask_is_read_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask
    assert (new_file_mode(), new_folder_mode()) == (0o640, 0o750)


def test_a_new_file_gets_the_umask_permissions(umask: int, tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_text_atomic(path, "{}\n")
    plain = tmp_path / "plain.json"
    plain.write_text("{}\n")
    assert _mode(path) == _mode(plain) == 0o640


def test_a_rewritten_file_keeps_its_own_permissions(umask: int, tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text("{}\n")
    path.chmod(0o604)
    write_text_atomic(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    assert _mode(path) == 0o604
