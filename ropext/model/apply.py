"""Applying a `RopeScaling` to a loaded transformers model, and proving it took effect.

Everything a config can say goes through transformers' own ``rope_parameters``: a per-pair vector
is exactly transformers' ``longrope`` type with an explicit ``attention_factor`` (``short_factor``
equal to ``long_factor`` when the scaling has no short vector, so the frequencies do not switch at
L0); dynamic NTK is its native ``dynamic`` type. The model's own rotary module is rebuilt from the
new config, so the attention code is untouched. Only LongRoPE's n̂ (``start_tokens``), which no
config format expresses, wraps that module in `StartTokenRotary`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ropext.errors import RopextError
from ropext.model.layout import read_layout, rope_dict, text_config
from ropext.scaling import RopeScaling


def rope_parameters_for(scaling: RopeScaling, current: dict[str, Any]) -> dict[str, Any]:
    """The ``rope_parameters`` dict that makes transformers compute exactly ``scaling``'s frequencies."""
    kept = {k: current[k] for k in ("partial_rotary_factor",) if k in current}
    if scaling.is_dynamic:
        return {**kept, "rope_type": "dynamic", "rope_theta": scaling.rope_theta, "factor": scaling.scale}
    if scaling.is_identity:
        return {**kept, "rope_type": "default", "rope_theta": scaling.rope_theta}
    return {
        **kept,
        "rope_type": "longrope",
        "rope_theta": scaling.rope_theta,
        "factor": scaling.scale,
        "original_max_position_embeddings": scaling.original_max_position_embeddings,
        "long_factor": list(scaling.factors),
        "short_factor": list(scaling.short_factors or scaling.factors),
        "attention_factor": scaling.attention_factor,
    }


def configure(config: Any, scaling: RopeScaling) -> None:
    """Write ``scaling`` into a (text) config in place: transformers' own closed-form type (linear, yarn,
    llama3) where it computes the scaling's frequencies to float32 precision, else the exact vector as
    longrope (dynamic NTK as dynamic). `ropext export` writes the same dict, so a patched model and its
    exported checkpoint compute the same logits."""
    from ropext.export import closed_form_rope_parameters

    current, layer_type = rope_dict(config)
    new = closed_form_rope_parameters(scaling, current, config) or rope_parameters_for(scaling, current)
    if layer_type is None:
        config.rope_parameters = new
    else:
        config.rope_parameters = {**config.rope_parameters, layer_type: new}
    # Dynamic NTK measures the input against max_position_embeddings, so it must stay L0, and so must
    # the identity (whose config carries no other record of L0); the static types advertise the target,
    # as Phi-3's long-context configs do.
    # Phi-3 also keeps L0 as a top-level attribute, which transformers copies into rope_parameters
    # whenever it standardises them; keep the two in agreement.
    if hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = scaling.original_max_position_embeddings
    keeps_original = scaling.is_dynamic or scaling.is_identity
    config.max_position_embeddings = (
        scaling.original_max_position_embeddings if keeps_original else scaling.max_position_embeddings
    )


class StartTokenRotary(nn.Module):
    """LongRoPE's n̂: positions below ``start_tokens`` use the original cos/sin (and no attention factor).

    It composes two unmodified transformers rotary modules, one built from the scaled config and one
    from the original, and picks per position, so it follows the model's own cos/sin layout.
    """

    def __init__(self, scaled: nn.Module, original: nn.Module, start_tokens: int) -> None:
        super().__init__()
        self.scaled = scaled
        self.original = original
        self.start_tokens = start_tokens

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.scaled.inv_freq

    @property
    def attention_scaling(self) -> float:
        return self.scaled.attention_scaling

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any):
        cos, sin = self.scaled(x, position_ids, *args, **kwargs)
        if int(position_ids.min()) >= self.start_tokens:
            return cos, sin
        cos_0, sin_0 = self.original(x, position_ids, *args, **kwargs)
        early = (position_ids < self.start_tokens)[..., None]
        return torch.where(early, cos_0, cos), torch.where(early, sin_0, sin)


def rotary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every rotary-embedding module (has an ``inv_freq`` buffer and a config), by qualified name."""
    found = []
    for name, module in model.named_modules():
        inner = module.scaled if isinstance(module, StartTokenRotary) else module
        if isinstance(module, StartTokenRotary) or (
            hasattr(inner, "config") and any(b.endswith("inv_freq") for b, _ in inner.named_buffers(recurse=False))
        ):
            found.append((name, module))
    return [(n, m) for n, m in found if not any(n.startswith(p + ".") for p, _ in found if p != n)]


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
        inner = module.scaled if isinstance(module, StartTokenRotary) else module
        original_config = copy.deepcopy(inner.config)
        configure(inner.config, scaling)
        device = next(inner.buffers()).device
        scaled = _build_rotary(type(inner), inner.config, device)
        if scaling.start_tokens > 0:
            unscaled_config = copy.deepcopy(original_config)
            configure(unscaled_config, _unscaled_like(scaling))
            unscaled = _build_rotary(type(inner), unscaled_config, device)
            scaled = StartTokenRotary(scaled, unscaled, scaling.start_tokens)
        _replace(model, name, scaled)
    configure(text_config(model.config), scaling)
    _validate_config(text_config(model.config), scaling)
    verify_scaling(model, scaling)
    return model


def _validate_config(config: Any, scaling: RopeScaling) -> None:
    """Some architectures accept only certain rope types (Phi-3: longrope); say so now, not at save time."""
    validate = getattr(config, "validate_rope", None)
    if validate is None:
        return
    try:
        validate()
    except (ValueError, KeyError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RopextError(
            f"model type {config.model_type!r} cannot carry a {scaling.method} scaling ({first}); "
            "use a static method or searched factors instead"
        ) from None


def _build_rotary(cls: type, config: Any, device: torch.device) -> nn.Module:
    # Allocating under the device context puts the float32 buffers where the model lives, whether or
    # not this transformers version's rotary constructor takes a ``device`` argument.
    with torch.device(device):
        return cls(config)


def _unscaled_like(scaling: RopeScaling) -> RopeScaling:
    return RopeScaling(
        method="none",
        rope_theta=scaling.rope_theta,
        rotary_dim=scaling.rotary_dim,
        original_max_position_embeddings=scaling.original_max_position_embeddings,
        max_position_embeddings=scaling.max_position_embeddings,
        factors=(1.0,) * len(scaling.factors),
    )


def _frequency_buffers(module: nn.Module, layer_type: str | None) -> tuple[torch.Tensor, float]:
    inner = module.scaled if isinstance(module, StartTokenRotary) else module
    if layer_type is None:
        return inner.inv_freq, inner.attention_scaling
    return getattr(inner, f"{layer_type}_inv_freq"), getattr(inner, f"{layer_type}_attention_scaling")


def verify_scaling(model: nn.Module, scaling: RopeScaling) -> None:
    """Fail loudly unless every rotary module holds float32 ``scaling.inv_freq()`` and its attention factor.

    The check reads the buffers the attention code uses, so it catches a transformers version that
    ignores or reinterprets a rope parameter, and RoPE buffers cast to bf16 by a careless ``.to()``.
    """
    _, layer_type = rope_dict(text_config(model.config))
    # Dynamic NTK's buffer follows the last input length, and longrope's switches between the short
    # and long vector per call; the rest hold one vector.
    expected_attention = 1.0 if scaling.is_dynamic else scaling.attention_factor
    lengths = [None]
    if scaling.short_factors is not None or scaling.is_dynamic:
        lengths.insert(0, scaling.original_max_position_embeddings)
    for name, module in rotary_modules(model):
        inv_freq, attention = _frequency_buffers(module, layer_type)
        if scaling.is_dynamic:
            inner = module.scaled if isinstance(module, StartTokenRotary) else module
            prefix = f"{layer_type}_" if layer_type else ""
            inv_freq = getattr(inner, f"{prefix}original_inv_freq", inv_freq)
        candidates = [scaling.inv_freq(length, device=inv_freq.device) for length in lengths]
        expected = candidates[0]
        if inv_freq.dtype != torch.float32:
            raise RopextError(f"{name}.inv_freq is {inv_freq.dtype}, not float32: RoPE must be computed in float32")
        if inv_freq.shape != expected.shape or not any(
            torch.allclose(inv_freq, candidate, rtol=1e-6, atol=0) for candidate in candidates
        ):
            worst = (inv_freq - expected).abs().max().item() if inv_freq.shape == expected.shape else float("nan")
            raise RopextError(
                f"applying {scaling.method} failed: {name}.inv_freq differs from the scaling's by up to {worst:.3g}; "
                "this transformers version builds rotary frequencies differently; please report it"
            )
        if abs(float(attention) - expected_attention) > 1e-6 * expected_attention:
            raise RopextError(
                f"applying {scaling.method} failed: {name} scales attention by {attention}, not {expected_attention}"
            )
