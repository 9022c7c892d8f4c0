"""Dynamic NTK: the base grows with the input length; equal to the original RoPE up to L0.

transformers' ``dynamic`` type computes θ' = θ·(f·n/L0 − (f − 1))^(d/(d−2)) with n = max(len, L0).
ropext fixes f = s = target / L0, so a `RopeScaling` with ``method: dynamic`` is self-contained:
its stored ``factors`` are the ones used for an input of exactly the target length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ropext.methods.base import Method, pair_exponents, scaling_from_factors
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling


def dynamic_factors(rotary_dim: int, original_length: int, scale: float, seq_len: int) -> tuple[float, ...]:
    """λ_i for an input of ``seq_len`` tokens."""
    n = max(seq_len, original_length)
    base_ratio = (scale * n / original_length - (scale - 1)) ** (rotary_dim / (rotary_dim - 2))
    return tuple(base_ratio**e for e in pair_exponents(rotary_dim))


@dataclass(frozen=True)
class DynamicParams:
    """Dynamic NTK has no free parameters here: its factor is target length / original length."""


def _dynamic(layout: RotaryLayout, target_length: int, params: DynamicParams) -> RopeScaling:
    s = target_length / layout.original_max_position_embeddings
    factors = dynamic_factors(layout.rotary_dim, layout.original_max_position_embeddings, s, target_length)
    return scaling_from_factors(layout, target_length, "dynamic", factors)


def _dynamic_native(scaling: RopeScaling) -> dict[str, Any]:
    return {"rope_type": "dynamic", "factor": scaling.scale}


DYNAMIC = Method("dynamic", DynamicParams, _dynamic, native=_dynamic_native, runtime_factors=dynamic_factors)
