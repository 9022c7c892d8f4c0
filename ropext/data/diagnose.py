"""Why a local corpus file cannot be read, in one line that names the file (and line) first.

`datasets` wraps the cause of a failed load in "An error occurred while generating the dataset" and
buries a bad JSON line's row in its own message. When a load fails, ropext reads the files itself to
find the first problem; a healthy corpus never pays for this.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

TEXT_FIELD = "text"


def first_problem(builder: str, files: Iterable[str], text_field: str = TEXT_FIELD) -> str | None:
    """The first thing wrong with ``files`` read by ``builder`` (json, text, parquet), or None."""
    for name in files:
        path = Path(name)
        if path.stat().st_size == 0 and builder != "text":  # an empty .txt file is an empty document, skipped
            return f"corpus file {path} is empty; remove it or give it documents"
        if builder == "text":
            problem = _not_utf8(path)
        elif builder == "json":
            problem = _json_problem(path, text_field)
        else:
            problem = None
        if problem:
            return problem
    return None


def one_line(err: BaseException) -> str:
    """An exception's message on one line (every line kept, not just the first), or its type."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _not_utf8(path: Path) -> str | None:
    data = _read_bytes(path)
    if data is None:
        return f"corpus file {path} is not a valid gzip file"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return (
            f"corpus file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "give UTF-8 text files, or convert it (e.g. iconv -t UTF-8)"
        )
    return None


def _read_bytes(path: Path) -> bytes | None:
    try:
        with _open(path) as handle:
            return handle.read()
    except (OSError, EOFError):  # gzip.BadGzipFile is an OSError
        return None


def _json_problem(path: Path, text_field: str) -> str | None:
    data = _read_bytes(path)
    if data is None:
        return f"corpus file {path} is not a valid gzip file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"corpus file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
    if not text.strip():
        return f"corpus file {path} holds no records; remove it or give it documents"
    lines_only = path.name.lower().removesuffix(".gz").endswith(".jsonl")
    try:  # a .json file may hold one document: a list of records or a mapping of columns
        whole = None if lines_only else json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if whole is not None:
        if isinstance(whole, dict) and isinstance(whole.get(text_field), list):  # columns: {"text": [...]}
            whole = [{text_field: value} for value in whole[text_field]]
        records = whole if isinstance(whole, list) else [whole]
        return _record_problem(path, enumerate(records, start=1), text_field, "record")
    return _record_problem(path, _lines(path, text), text_field, "line")


def _lines(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed record) of every non-blank line; a line that is not JSON raises `_BadLine`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            message = f"corpus file {path}, line {number}: not valid JSON ({err.msg} at column {err.colno})"
            raise _BadLine(message) from None


class _BadLine(Exception):
    pass


def _record_problem(path: Path, records: Iterable[tuple[int, object]], text_field: str, unit: str) -> str | None:
    try:
        for number, record in records:
            if not isinstance(record, dict):
                return f"corpus file {path}, {unit} {number}: expected an object with a {text_field!r} field"
            value = record.get(text_field)
            if value is not None and not isinstance(value, str):
                return (
                    f"corpus file {path}, {unit} {number}: {text_field!r} is {type(value).__name__} "
                    f"({str(value)[:40]}), not a string"
                )
    except _BadLine as bad:
        return str(bad)
    return None
