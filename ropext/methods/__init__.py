"""Closed-form scaling methods, registered by name (``ropext ls`` lists them).

Each entry's `Method` carries its facts (native transformers form, attention default, whether it is
dynamic). This module imports no method module, so `ropext.scaling` can ask it about a scaling's method
without an import circle; entries load on first use.
"""

from __future__ import annotations

from typing import Any

from ropext.registry import Registry

# Entries are `ropext.methods.base.Method`s. Not even a TYPE_CHECKING import of it here: that module imports
# `ropext.scaling`, which asks this one, so the import would close a circle.
METHODS: Registry[Any] = Registry("method")
# Registration order is also the order of methods in the report's tables and legends.
METHODS.register("none", "ropext.methods.simple:NONE", "original RoPE, no scaling (the baseline)")
METHODS.register(
    "pi", "ropext.methods.simple:PI", "position interpolation: every pair divided by s", aliases=("linear",)
)
METHODS.register("ntk", "ropext.methods.simple:NTK", "static NTK-aware scaling: base θ·s^(d/(d-2))")
METHODS.register("dynamic", "ropext.methods.dynamic:DYNAMIC", "dynamic NTK: base grows with the input length")
METHODS.register("yarn", "ropext.methods.yarn:YARN", "YaRN: ramp from kept to interpolated pairs, attention scaled")
METHODS.register("llama3", "ropext.methods.llama3:LLAMA3", "Llama 3.1 wavelength bands with a smooth blend")
METHODS.register("dprope", "ropext.methods.dprope:DPROPE", "DPRoPE: per pair, the choice that least disturbs angles")


def method_of(name: str) -> Any:
    """The registered `Method` a scaling's ``method`` label names, or None (a searcher's name, a hand label)."""
    return METHODS.get(name) if name in METHODS else None


__all__ = ["METHODS", "method_of"]
