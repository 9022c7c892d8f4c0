"""Applying a `RopeScaling` to a loaded transformers model, and proving it took effect.

`ropext.model.rope_config` says what the config carries (transformers' own ``rope_parameters``); the
model's own rotary module is rebuilt from the new config, so the attention code is untouched. Only
LongRoPE's n̂ (``start_tokens``), which no config format expresses, wraps that module in
`StartTokenRotary`.
"""

from __future__ import annotations

import copy

from torch import nn

from ropext.errors import RopextError
from ropext.model.layout import read_layout, text_config
from ropext.model.rope_config import check_accepted, verify_scaling, write_scaling
from ropext.model.rotary import (
    StartTokenRotary,
    build_rotary,
    inner_rotary,
    recompute_long_frequencies_per_call,
    rotary_modules,
)
from ropext.scaling import RopeScaling

__all__ = ["StartTokenRotary", "apply_scaling", "rotary_modules", "verify_scaling"]


def _replace(model: nn.Module, qualified: str, module: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_scaling(model: nn.Module, scaling: RopeScaling, source: str = "the scaling") -> nn.Module:
    """Rescale ``model``'s RoPE to ``scaling`` in place (returns the model); verifies the result."""
    layout = read_layout(model.config, name=getattr(model.config, "name_or_path", "model") or "model")
    scaling.check_matches(layout, source)
    modules = rotary_modules(model)
    if not modules:
        raise RopextError(f"found no rotary embedding module in {type(model).__name__}; ropext rescales RoPE only")
    for name, module in modules:
        inner = inner_rotary(module)
        original_config = copy.deepcopy(inner.config)
        write_scaling(inner.config, scaling)
        device = next(inner.buffers()).device
        scaled = build_rotary(type(inner), inner.config, device)
        recompute_long_frequencies_per_call(scaled)
        if scaling.start_tokens > 0:
            unscaled_config = copy.deepcopy(original_config)
            write_scaling(unscaled_config, _unscaled_like(scaling))
            unscaled = build_rotary(type(inner), unscaled_config, device)
            scaled = StartTokenRotary(scaled, unscaled, scaling.start_tokens)
        _replace(model, name, scaled)
    write_scaling(text_config(model.config), scaling)
    check_accepted(text_config(model.config), scaling)
    verify_scaling(model, scaling)
    return model


def _unscaled_like(scaling: RopeScaling) -> RopeScaling:
    return RopeScaling(
        method="none",
        rope_theta=scaling.rope_theta,
        rotary_dim=scaling.rotary_dim,
        original_max_position_embeddings=scaling.original_max_position_embeddings,
        max_position_embeddings=scaling.max_position_embeddings,
        factors=(1.0,) * len(scaling.factors),
    )
