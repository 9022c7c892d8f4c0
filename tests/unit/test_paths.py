"""Output paths are checked before any work starts: one error naming the path and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ropext.errors import RopextError
from ropext.paths import check_output_file, check_output_folder

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _refused(check, path: Path, *fragments: str, **kwargs) -> None:
    with pytest.raises(RopextError) as raised:
        check(path, "--json", **kwargs)
    message = str(raised.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_writable_paths_pass_and_create_nothing(tmp_path: Path) -> None:
    check_output_file(tmp_path / "new" / "deeper" / "r.json", "--json")
    check_output_file(None, "--json")
    (tmp_path / "old.json").write_text("{}")
    check_output_file(tmp_path / "old.json", "--json")
    check_output_folder(tmp_path / "out", "--out")
    check_output_folder(tmp_path, "--out", staged_beside=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]


def test_a_folder_where_a_file_is_expected(tmp_path: Path) -> None:
    _refused(check_output_file, tmp_path, "is a folder", "results.json")


def test_a_file_where_a_folder_is_expected(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    _refused(check_output_folder, tmp_path / "taken", "is a file")


@pytest.mark.parametrize("check", [check_output_file, check_output_folder])
def test_a_parent_that_is_a_regular_file_cannot_be_created(tmp_path: Path, check) -> None:
    (tmp_path / "plain").write_text("")
    _refused(check, tmp_path / "plain" / "sub" / "x.json", "cannot create its folder", "is a file, not a folder")


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders; the regular-file parent covers it")
@pytest.mark.parametrize("check", [check_output_file, check_output_folder])
def test_read_only_folder(tmp_path: Path, check) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(check, locked / "x.json", "not writable")
        _refused(check, locked / "missing" / "x.json", "not writable", "would be created")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only files")
def test_read_only_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("{}")
    path.chmod(0o400)
    _refused(check_output_file, path, "not writable")
