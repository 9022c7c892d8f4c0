"""YaRN: interpolate low-frequency pairs, keep high-frequency ones, ramp between; scale attention."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ropext.errors import RopextError
from ropext.methods.attention import yarn_attention
from ropext.methods.base import Method, recorded_form, scaling_from_factors
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling


@dataclass(frozen=True)
class YarnParams:
    factor: float | None = None
    """Interpolation ratio s; default target length / original length."""
    beta_fast: float = 32.0
    """Pairs that rotate more than this many times over L0 are left untouched."""
    beta_slow: float = 1.0
    """Pairs that rotate fewer than this many times over L0 are fully interpolated."""
    attention_factor: float | None = None
    """Multiplier of cos/sin; default 0.1·ln(s) + 1 (or the mscale ratio when both mscales are set)."""
    mscale: float | None = None
    """DeepSeek-style numerator coefficient of the attention factor."""
    mscale_all_dim: float | None = None
    """DeepSeek-style denominator coefficient of the attention factor."""
    truncate: bool = True
    """Round the ramp's ends to whole pairs (floor/ceil), as the original code does."""


def yarn_ramp_bounds(rotary_dim: int, base: float, original_length: int, params: YarnParams) -> tuple[float, float]:
    def correction_dim(rotations: float) -> float:
        return rotary_dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(params.beta_fast), correction_dim(params.beta_slow)
    if params.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rotary_dim - 1)


def _yarn(layout: RotaryLayout, target_length: int, params: YarnParams) -> RopeScaling:
    if not params.beta_fast > params.beta_slow > 0:
        raise RopextError(
            f"yarn needs beta_fast > beta_slow > 0, got beta_fast={params.beta_fast:g}, beta_slow={params.beta_slow:g}"
        )
    s = params.factor or target_length / layout.original_max_position_embeddings
    low, high = yarn_ramp_bounds(layout.rotary_dim, layout.rope_theta, layout.original_max_position_embeddings, params)
    if low == high:
        high += 0.001  # the reference code's guard against a zero-width ramp
    factors = []
    for i in range(layout.pairs):
        keep = 1.0 - min(max((i - low) / (high - low), 0.0), 1.0)  # γ_i: 1 keeps the original frequency
        factors.append(1.0 / ((1.0 - keep) / s + keep))
    if params.attention_factor is not None:
        attention = params.attention_factor
    elif params.mscale and params.mscale_all_dim:
        attention = yarn_attention(s, coefficient=params.mscale) / yarn_attention(s, coefficient=params.mscale_all_dim)
    else:
        attention = YARN.attention_default(s, layout.original_max_position_embeddings)
    return scaling_from_factors(layout, target_length, "yarn", factors, attention_factor=attention)


def _yarn_native(scaling: RopeScaling) -> dict[str, Any]:
    form = recorded_form(scaling, "yarn", YarnParams(), "beta_fast", "beta_slow", "truncate")
    return {**form, "attention_factor": float(scaling.attention_factor)}


YARN = Method("yarn", YarnParams, _yarn, native=_yarn_native, attention_default=yarn_attention)
