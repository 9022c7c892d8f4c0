"""The textbook methods: none, PI (linear) and static NTK-aware scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ropext.methods.base import Method, pair_exponents, scaling_from_factors
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling


@dataclass(frozen=True)
class NoParams:
    """This method takes no parameters."""


def _none(layout: RotaryLayout, target_length: int, params: NoParams) -> RopeScaling:
    # The identity extends nothing: a target below the original context is recorded as the original context
    # (a scaling's target is never below it).
    target = max(target_length, layout.original_max_position_embeddings)
    return scaling_from_factors(layout, target, "none", [1.0] * layout.pairs)


NONE = Method("none", NoParams, _none)


@dataclass(frozen=True)
class LinearParams:
    factor: float | None = None
    """Interpolation ratio; default s = target length / original length."""


def _pi(layout: RotaryLayout, target_length: int, params: LinearParams) -> RopeScaling:
    s = params.factor or target_length / layout.original_max_position_embeddings
    return scaling_from_factors(layout, target_length, "pi", [s] * layout.pairs)


def _pi_native(scaling: RopeScaling) -> dict[str, Any]:
    return {"rope_type": "linear", "factor": float(scaling.factors[0])}


PI = Method("pi", LinearParams, _pi, native=_pi_native)


@dataclass(frozen=True)
class NtkParams:
    factor: float | None = None
    """Scale s in the new base θ' = θ · s^(d/(d-2)); default target length / original length."""


def _ntk(layout: RotaryLayout, target_length: int, params: NtkParams) -> RopeScaling:
    s = params.factor or target_length / layout.original_max_position_embeddings
    d = layout.rotary_dim
    # θ' = θ·s^(d/(d-2)) divides pair i's frequency by (s^(d/(d-2)))^(2i/d): the slowest pair gets exactly s.
    base_ratio = s ** (d / (d - 2))
    factors = [base_ratio**e for e in pair_exponents(d)]
    return scaling_from_factors(layout, target_length, "ntk", factors)


NTK = Method("ntk", NtkParams, _ntk)
