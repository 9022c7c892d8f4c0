"""Token lengths as people write them: ``32768``, ``32k``, ``1m``."""

import re

from ropext.errors import RopextError

_SUFFIX = {"": 1, "k": 1024, "m": 1024 * 1024}
_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(text: str | int) -> int:
    """``"32k"`` -> 32768 (k = 1024, m = 1024²), ``"8192"`` -> 8192."""
    if isinstance(text, bool):
        raise RopextError(f"length {text!r} is not a token count")
    if isinstance(text, int):
        value = text
    else:
        match = _LENGTH.match(str(text))
        if not match:
            raise RopextError(f"cannot read length {text!r}: write a token count such as 32768, 32k or 1m")
        number, suffix = match.groups()
        scaled = float(number) * _SUFFIX[suffix.lower()]
        if scaled != int(scaled):
            raise RopextError(f"length {text!r} is not a whole number of tokens")
        value = int(scaled)
    if value <= 0:
        raise RopextError(f"length {text!r} must be positive")
    return value


def parse_lengths(text: str) -> list[int]:
    """``"8k,16k,32k"`` -> [8192, 16384, 32768], kept in the order given, duplicates dropped."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise RopextError("no lengths given: write them comma-separated, e.g. --lengths 8k,16k,32k")
    seen: list[int] = []
    for part in parts:
        value = parse_length(part)
        if value not in seen:
            seen.append(value)
    return seen


def format_length(tokens: int) -> str:
    """8192 -> ``"8k"``; lengths that are not a multiple of 1024 stay as plain numbers."""
    if tokens <= 0:
        return str(tokens)
    if tokens % (1024 * 1024) == 0:
        return f"{tokens // (1024 * 1024)}m"
    if tokens % 1024 == 0:
        return f"{tokens // 1024}k"
    return str(tokens)
