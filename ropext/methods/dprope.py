"""DPRoPE: per pair, interpolate or extrapolate, whichever disturbs the rotary-angle distribution less."""

from __future__ import annotations

from dataclasses import dataclass

from ropext.disturbance import DEFAULT_INTERVALS, pair_disturbance
from ropext.errors import RopextError
from ropext.methods.base import Method, scaling_from_factors
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling, original_inv_freq


@dataclass(frozen=True)
class DpropeParams:
    t: float = 0.0
    """Interpolate pair i when D_i(extrapolate) > D_i(interpolate) + t."""
    intervals: int = DEFAULT_INTERVALS
    """Number of bins B of the angle histogram over [0, 2π)."""
    interpolated_dims: int | None = None
    """Instead of t: interpolate exactly this many rotary dims (2 per pair), those where interpolation
    helps most (the paper's Table 4 varies this)."""
    factor: float | None = None
    """Interpolation ratio of interpolated pairs; default target length / original length."""


def _dprope(layout: RotaryLayout, target_length: int, params: DpropeParams) -> RopeScaling:
    if params.intervals < 2:
        raise RopextError(f"dprope needs intervals >= 2, got {params.intervals}")
    s = params.factor or target_length / layout.original_max_position_embeddings
    original = original_inv_freq(layout.rope_theta, layout.rotary_dim)
    l0 = layout.original_max_position_embeddings
    d_extrapolate = pair_disturbance(original, original, l0, target_length, params.intervals)
    d_interpolate = pair_disturbance(original, original / s, l0, target_length, params.intervals)
    gain = d_extrapolate - d_interpolate
    if params.interpolated_dims is None:
        interpolate = (gain > params.t).tolist()
    else:
        count = params.interpolated_dims
        if count % 2 or not 0 <= count <= layout.rotary_dim:
            raise RopextError(
                f"interpolated_dims must be an even number between 0 and {layout.rotary_dim}, got {count}"
            )
        chosen = set(gain.argsort(descending=True)[: count // 2].tolist())
        interpolate = [i in chosen for i in range(layout.pairs)]
    factors = [s if choose else 1.0 for choose in interpolate]
    return scaling_from_factors(layout, target_length, "dprope", factors)


DPROPE = Method("dprope", DpropeParams, _dprope)
