"""Token lengths as people type them: parse_length, parse_lengths, format_length."""

from __future__ import annotations

import re

import pytest

from ropext.errors import RopextError
from ropext.lengths import doubling_lengths, format_length, parse_length, parse_lengths, requested_lengths


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


@pytest.mark.parametrize(
    ("original", "max_len", "expected"),
    [
        ("8k", "64k", ["8k", "16k", "32k", "64k"]),  # the design card: --max-len 64k on an 8k model
        ("8k", "48k", ["8k", "16k", "32k", "48k"]),  # L is included even when it is not a doubling
        ("8k", "9k", ["8k", "9k"]),
        ("4k", "32k", ["4k", "8k", "16k", "32k"]),
        ("8k", "8k", ["8k"]),  # L at the original context: just L
        ("8k", "4k", ["4k"]),  # L below it: just L
        ("256", "1000", ["256", "512", "1000"]),
        ("2048", "5000", ["2k", "4k", "5000"]),
    ],
)
def test_max_len_gives_the_original_context_doubling_up_to_it(original: str, max_len: str, expected: list[str]) -> None:
    values = requested_lengths(None, max_len, parse_length(original))
    assert [format_length(v) for v in values] == expected
    assert doubling_lengths(parse_length(original), parse_length(max_len)) == values


def test_requested_lengths_reads_lengths_when_given() -> None:
    assert requested_lengths("16k,8k", None, 8192) == [16384, 8192]


def test_giving_both_lengths_and_max_len_is_one_error_naming_both() -> None:
    with pytest.raises(RopextError, match=r"either --lengths \(8k\) or --max-len \(64k\), not both"):
        requested_lengths("8k", "64k", 8192)


def test_giving_neither_names_both_flags() -> None:
    with pytest.raises(RopextError, match=r"give --lengths .* or --max-len"):
        requested_lengths(None, None, 8192)


@pytest.mark.parametrize(
    ("lengths", "max_len", "fragment"),
    [
        (None, "abc", "'abc' given to --max-len"),
        (None, "0", "given to --max-len must be positive"),
        (None, "8k,16k", "--max-len takes one length"),
        ("8k,x", None, "'x' given to --lengths"),
        (",", None, "no lengths given to --lengths"),
    ],
)
def test_length_errors_name_the_flag_typed(lengths: str | None, max_len: str | None, fragment: str) -> None:
    with pytest.raises(RopextError, match=re.escape(fragment)):
        requested_lengths(lengths, max_len, 8192)


@pytest.mark.parametrize("flag", ["--ruler-lengths", "--passkey-lengths", "--ppl-lengths"])
def test_parse_lengths_names_the_flag_it_reads(flag: str) -> None:
    with pytest.raises(RopextError, match=f"no lengths given to {flag}: .* e.g. {flag} 8k"):
        parse_lengths(" , ", flag)
    with pytest.raises(RopextError, match=f"given to {flag}"):
        parse_lengths("8k,1.3k", flag)
