"""The attention-factor formulas (the multiplier of cos and sin), each written once.

A method's registry entry names the one it defaults to (`Method.attention_default`); export uses
LongRoPE's to decide whether vLLM needs explicit mscale keys; the search resolves ``--attention-factor
yarn|longrope`` to these.
"""

from __future__ import annotations

import math


def no_attention(scale: float, original_length: int) -> float:
    """Attention left as it is: methods that only move frequencies."""
    return 1.0


def yarn_attention(scale: float, original_length: int = 0, coefficient: float = 1.0) -> float:
    """YaRN's ``0.1·c·ln(s) + 1`` (1 when nothing is stretched); ``original_length`` is not used."""
    return 1.0 if scale <= 1 else 0.1 * coefficient * math.log(scale) + 1.0


def longrope_attention(scale: float, original_length: int) -> float:
    """LongRoPE's (and vLLM's longrope default) ``√(1 + ln s / ln L0)``."""
    return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(original_length))
