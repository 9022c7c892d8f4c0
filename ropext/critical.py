"""Pairs that never complete a turn within the original context, and how far a scaling keeps them trained.

A pair whose wavelength 2π/θ_i exceeds the original context L0 only ever saw angles in [0, 2π·L0/wavelength)
during pre-training. Divided by a factor λ_i, it reaches the end of that range at position L0·λ_i; beyond
it the pair produces angles the model never saw, whatever the perplexity of nearby text says. A scaling
keeps every angle trained up to the target length only if λ_i ≥ s for all such pairs — YaRN's rule for
its low-frequency pairs, and the "critical dimension" bound of later LongRoPE work. Perplexity on books
is dominated by nearby tokens, so a perplexity-guided search does not see this failure; retrieval does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def wavelengths(rope_theta: float, rotary_dim: int) -> list[float]:
    """Tokens per full turn of each pair, from the same float32 inverse frequencies transformers uses."""
    from ropext.scaling import original_inv_freq

    return [2 * math.pi / inv for inv in original_inv_freq(rope_theta, rotary_dim).tolist()]


def untrained_turn_pairs(rope_theta: float, rotary_dim: int, original: int) -> list[int]:
    """Indices of the pairs that do not complete one turn within ``original`` positions."""
    return [i for i, w in enumerate(wavelengths(rope_theta, rotary_dim)) if w > original]


def critical_floors(rope_theta: float, rotary_dim: int, original: int, scale: float) -> tuple[float, ...]:
    """Lowest factor per pair that keeps every angle up to ``scale``·``original`` within the trained range."""
    critical = set(untrained_turn_pairs(rope_theta, rotary_dim, original))
    return tuple(max(scale, 1.0) if i in critical else 1.0 for i in range(rotary_dim // 2))


def trained_angle_length(factors: Sequence[float], rope_theta: float, rotary_dim: int, original: int) -> float:
    """Longest position whose angles all lie within the range pre-training saw (∞ if no pair limits it)."""
    limits = [original * factors[i] for i in untrained_turn_pairs(rope_theta, rotary_dim, original)]
    return min(limits, default=math.inf)
