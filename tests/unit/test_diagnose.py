"""Why a corpus file cannot be read: the first problem, named by file and line, or None for a good file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ropext.data.diagnose import first_problem, one_line


def _write(folder: Path, name: str, content: bytes) -> str:
    path = folder / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    return str(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("lines.jsonl", b'{"text": "a"}\n\n{"text": "b", "id": 3}\n'),
        ("lines.jsonl.gz", b'{"text": "a"}\n'),
        ("records.json", json.dumps([{"text": "a"}, {"text": "b"}]).encode()),
        ("columns.json", json.dumps({"text": ["a", "b"], "id": [1, 2]}).encode()),
        ("missing-text.jsonl", b'{"body": "a"}\n'),  # the missing field is reported by the reader itself
    ],
)
def test_good_json_has_no_problem(tmp_path: Path, name: str, content: bytes) -> None:
    assert first_problem("json", [_write(tmp_path, name, content)]) is None


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.jsonl", b"", "a.jsonl is empty"),
        ("a.jsonl", b"\n  \n", "a.jsonl holds no records"),
        ("a.jsonl", b'{"text": "a"}\n{"text": "b",}\n', "a.jsonl, line 2: not valid JSON"),
        ("a.jsonl.gz", b'{"text": "a"}\nnot json\n', "a.jsonl.gz, line 2: not valid JSON"),
        ("a.jsonl", b'{"text": "a"}\n{"text": 12345}\n', "a.jsonl, line 2: 'text' is int (12345), not a string"),
        ("a.jsonl", b'["text"]\n', "a.jsonl, line 1: expected an object with a 'text' field"),
        ("a.json", json.dumps([{"text": "a"}, {"text": None}, {"text": 1.5}]).encode(), "a.json, record 3: 'text'"),
        ("a.jsonl", b'{"text": "\xff"}\n', "a.jsonl is not UTF-8 text (byte 0xff at offset 10)"),
    ],
)
def test_json_problems_name_file_and_line(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    problem = first_problem("json", [_write(tmp_path, name, content)])
    assert problem is not None and expected in problem, problem


def test_gzip_that_is_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "fake.jsonl.gz"
    path.write_bytes(b'{"text": "plain"}\n')
    assert "fake.jsonl.gz is not a valid gzip file" in str(first_problem("json", [str(path)]))


def test_text_files(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.txt", "UTF-8 text: ünïcödé\n".encode())
    empty = _write(tmp_path, "empty.txt", b"")
    binary = _write(tmp_path, "binary.txt", b"ok\x00\x80rest")
    assert first_problem("text", [good, empty]) is None  # an empty .txt is an empty document
    problem = first_problem("text", [good, binary])
    assert problem is not None and "binary.txt is not UTF-8 text (byte 0x80 at offset 3)" in problem


def test_one_line_keeps_every_line() -> None:
    assert one_line(ValueError("first\n\n  second  \nthird")) == "first second third"
    assert one_line(IndexError()) == "IndexError"
