"""The rotary-embedding modules of a built model: finding them, rebuilding one, and LongRoPE's n̂ wrapper."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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


def inner_rotary(module: nn.Module) -> nn.Module:
    """The transformers module itself (the scaled one inside a `StartTokenRotary`)."""
    return module.scaled if isinstance(module, StartTokenRotary) else module


def rotary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every rotary-embedding module (has an ``inv_freq`` buffer and a config), by qualified name."""
    found = []
    for name, module in model.named_modules():
        inner = inner_rotary(module)
        if isinstance(module, StartTokenRotary) or (
            hasattr(inner, "config") and any(b.endswith("inv_freq") for b, _ in inner.named_buffers(recurse=False))
        ):
            found.append((name, module))
    return [(n, m) for n, m in found if not any(n.startswith(p + ".") for p, _ in found if p != n)]


def _drop_cached_long_frequencies(module: nn.Module, args: Any) -> None:
    for name in [n for n in vars(module) if n.endswith("_long_inv_freq")]:
        delattr(module, name)


def recompute_long_frequencies_per_call(module: nn.Module) -> None:
    """Make a per-layer-type ``longrope`` module (Gemma 3's global layers) rebuild its long frequencies on
    every call.

    transformers 5.17 to 5.19 (at least; 5.23 is fixed) cache them as ``{layer_type}_long_inv_freq`` after the
    first input longer than the original context, then on the next such input see the cache but never read it
    (``UnboundLocalError``): a second long forward, in training or over a second document, fails. Later versions
    read the cache. Dropping it before each call is correct for both, and rebuilding costs one vector of
    ``pairs`` floats. ropext asks for 5.23, but a Gemma 3 folder (no GGUF check) also loads on older versions.
    """
    rope_type = getattr(module, "rope_type", None)
    if isinstance(rope_type, dict) and "longrope" in rope_type.values():
        module.register_forward_pre_hook(_drop_cached_long_frequencies)


def build_rotary(cls: type, config: Any, device: torch.device | str) -> nn.Module:
    # Allocating under the device context puts the float32 buffers where the model lives, whether or
    # not this transformers version's rotary constructor takes a ``device`` argument.
    with torch.device(device):
        return cls(config)
