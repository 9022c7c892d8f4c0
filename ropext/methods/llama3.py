"""Llama 3.1: keep short wavelengths, interpolate long ones, blend smoothly between."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ropext.methods.base import Method, recorded_form, scaling_from_factors
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling, original_inv_freq


@dataclass(frozen=True)
class Llama3Params:
    factor: float | None = None
    """Interpolation ratio for the longest wavelengths; default target length / original length."""
    low_freq_factor: float = 1.0
    """Wavelengths above L0 / low_freq_factor are fully interpolated."""
    high_freq_factor: float = 4.0
    """Wavelengths below L0 / high_freq_factor are kept."""


def _llama3(layout: RotaryLayout, target_length: int, params: Llama3Params) -> RopeScaling:
    s = params.factor or target_length / layout.original_max_position_embeddings
    lf, hf = params.low_freq_factor, params.high_freq_factor
    original = layout.original_max_position_embeddings
    factors = []
    # The band tests use float32 wavelengths, as transformers does, so a pair on a boundary lands in
    # the same band there and here.
    for inv in original_inv_freq(layout.rope_theta, layout.rotary_dim).tolist():
        wavelength = 2 * math.pi / inv
        if wavelength < original / hf:
            factors.append(1.0)
        elif wavelength > original / lf:
            factors.append(s)
        else:
            smooth = (original / wavelength - lf) / (hf - lf)
            factors.append(1.0 / ((1 - smooth) / s + smooth))
    return scaling_from_factors(layout, target_length, "llama3", factors)


def _llama3_native(scaling: RopeScaling) -> dict[str, Any]:
    return recorded_form(scaling, "llama3", Llama3Params(), "low_freq_factor", "high_freq_factor")


LLAMA3 = Method("llama3", Llama3Params, _llama3, native=_llama3_native)
