"""RULER's metrics (``eval/synthetic/constants.py``): substring matches, case-insensitive, per sample in [0, 1]."""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(output: str) -> str:
    """RULER's ``postprocess_pred``: strip, and turn control characters into newlines."""
    return _CONTROL.sub("\n", output.strip()).strip()


def string_match_all(output: str, expected: Sequence[str]) -> float:
    """The fraction of the expected strings that occur in the output (all RULER tasks but QA)."""
    text = postprocess(output).lower()
    return sum(reference.lower() in text for reference in expected) / len(expected)


def string_match_part(output: str, expected: Sequence[str]) -> float:
    """1 when any of the expected strings occurs in the output, else 0 (QA: any accepted answer)."""
    text = postprocess(output).lower()
    return float(any(reference.lower() in text for reference in expected))


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def score(metric: str, output: str, expected: Sequence[str]) -> float:
    return METRICS[metric](output, expected)
