"""Token lengths as people write them: ``32768``, ``32k``, ``1m``."""

import re

from ropext.errors import RopextError

_SUFFIX = {"": 1, "k": 1024, "m": 1024 * 1024}
_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(text: str | int, flag: str | None = None) -> int:
    """``"32k"`` -> 32768 (k = 1024, m = 1024²), ``"8192"`` -> 8192. ``flag`` (e.g. ``"--max-len"``) is
    named in the error, so the user sees which of several length options was wrong."""
    given = f" given to {flag}" if flag else ""
    if isinstance(text, bool):
        raise RopextError(f"length {text!r}{given} is not a token count")
    if isinstance(text, int):
        value = text
    else:
        match = _LENGTH.match(str(text))
        if not match:
            raise RopextError(f"cannot read length {text!r}{given}: write a token count such as 32768, 32k or 1m")
        number, suffix = match.groups()
        scaled = float(number) * _SUFFIX[suffix.lower()]
        if scaled != int(scaled):
            raise RopextError(f"length {text!r}{given} is not a whole number of tokens")
        value = int(scaled)
    if value <= 0:
        raise RopextError(f"length {text!r}{given} must be positive")
    return value


def parse_lengths(text: str, flag: str = "--lengths") -> list[int]:
    """``"8k,16k,32k"`` -> [8192, 16384, 32768], kept in the order given, duplicates dropped."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise RopextError(f"no lengths given to {flag}: write them comma-separated, e.g. {flag} 8k,16k,32k")
    seen: list[int] = []
    for part in parts:
        value = parse_length(part, flag)
        if value not in seen:
            seen.append(value)
    return seen


def doubling_lengths(start: int, stop: int) -> list[int]:
    """``start``, ``2·start``, ``4·start``… below ``stop``, then ``stop`` itself: 8k to 48k gives 8k, 16k, 32k,
    48k. A ``stop`` at or below ``start`` gives just ``stop`` (the one length asked for)."""
    if start <= 0 or stop <= 0:
        raise ValueError(f"lengths must be positive, got start {start} and stop {stop}")
    lengths = []
    length = start
    while length < stop:
        lengths.append(length)
        length *= 2
    return [*lengths, stop]


def requested_lengths(lengths: str | None, max_len: str | None, original: int) -> list[int]:
    """The lengths of ``--lengths A,B,C`` or of ``--max-len L`` (``original`` doubling up to L), exactly one of them.

    ``original`` is the context the model was trained to (the scaling's ``original_max_position_embeddings``
    when one is applied, else the model config's): the first length a long-context evaluation needs.
    """
    if lengths is not None and max_len is not None:
        raise RopextError(
            f"give either --lengths ({lengths}) or --max-len ({max_len}), not both: --max-len L evaluates "
            "the model's original context doubling up to L"
        )
    if max_len is not None:
        if "," in max_len:
            raise RopextError(
                f"--max-len takes one length (e.g. --max-len 64k), got {max_len!r}; list lengths with --lengths"
            )
        return doubling_lengths(original, parse_length(max_len, "--max-len"))
    if lengths is None:
        raise RopextError("no lengths: give --lengths (e.g. --lengths 8k,16k,32k) or --max-len (e.g. --max-len 64k)")
    return parse_lengths(lengths, "--lengths")


def format_length(tokens: int) -> str:
    """8192 -> ``"8k"``; lengths that are not a multiple of 1024 stay as plain numbers."""
    if tokens <= 0:
        return str(tokens)
    if tokens % (1024 * 1024) == 0:
        return f"{tokens // (1024 * 1024)}m"
    if tokens % 1024 == 0:
        return f"{tokens // 1024}k"
    return str(tokens)
