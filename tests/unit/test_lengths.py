"""Token lengths as people type them: parse_length, parse_lengths, format_length."""

from __future__ import annotations

import pytest

from ropext.errors import RopextError
from ropext.lengths import format_length, parse_length, parse_lengths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32768", 32768),
        ("32k", 32768),
        ("32K", 32768),
        ("1m", 1048576),
        ("1M", 1048576),
        ("1.5k", 1536),
        ("2.0", 2),
        (" 8k ", 8192),
        ("300", 300),
    ],
)
def test_parse_length_reads_plain_and_suffixed_counts(text: str, expected: int) -> None:
    assert parse_length(text) == expected


@pytest.mark.parametrize("value", [1, 8192, 1_000_003])
def test_parse_length_passes_integers_through(value: int) -> None:
    result = parse_length(value)
    assert result == value
    assert type(result) is int


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("abc", "cannot read length"),
        ("", "cannot read length"),
        ("-5", "cannot read length"),
        ("1e3", "cannot read length"),
        ("32kb", "cannot read length"),
        ("0", "must be positive"),
        ("0k", "must be positive"),
        ("1.3k", "not a whole number"),
        ("0.5", "not a whole number"),
    ],
)
def test_parse_length_rejects_bad_text(text: str, fragment: str) -> None:
    with pytest.raises(RopextError, match=fragment):
        parse_length(text)


@pytest.mark.parametrize("value", [0, -1, -8192])
def test_parse_length_rejects_non_positive_integers(value: int) -> None:
    with pytest.raises(RopextError, match="must be positive"):
        parse_length(value)


def test_parse_lengths_keeps_order_and_drops_duplicates() -> None:
    assert parse_lengths("16k,8k,16384,32k,8192") == [16384, 8192, 32768]


def test_parse_lengths_ignores_empty_items_and_spaces() -> None:
    assert parse_lengths(" 4k , ,2k,") == [4096, 2048]


@pytest.mark.parametrize("text", ["", ",", " , "])
def test_parse_lengths_needs_at_least_one_length(text: str) -> None:
    with pytest.raises(RopextError, match="no lengths given"):
        parse_lengths(text)


def test_parse_lengths_reports_the_bad_item() -> None:
    with pytest.raises(RopextError, match="'x'"):
        parse_lengths("8k,x")


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (8192, "8k"),
        (1024, "1k"),
        (1536, "1536"),
        (1048576, "1m"),
        (3 * 1048576, "3m"),
        (1048576 + 1024, "1025k"),
        (1000, "1000"),
    ],
)
def test_format_length(tokens: int, expected: str) -> None:
    assert format_length(tokens) == expected


@pytest.mark.parametrize("tokens", [300, 1024, 1536, 8192, 1048576, 5 * 1048576, 1048576 + 1024])
def test_format_length_round_trips_through_parse_length(tokens: int) -> None:
    assert parse_length(format_length(tokens)) == tokens
