"""Closed-form scaling methods, registered by name (``ropext ls`` lists them)."""

from ropext.methods.base import Method
from ropext.registry import Registry

METHODS: Registry[Method] = Registry("method")
METHODS.register("none", "ropext.methods.simple:NONE", "original RoPE, no scaling (the baseline)")
METHODS.register(
    "pi", "ropext.methods.simple:PI", "position interpolation: every pair divided by s", aliases=("linear",)
)
METHODS.register("ntk", "ropext.methods.simple:NTK", "static NTK-aware scaling: base θ·s^(d/(d-2))")
METHODS.register("dynamic", "ropext.methods.dynamic:DYNAMIC", "dynamic NTK: base grows with the input length")
METHODS.register("yarn", "ropext.methods.yarn:YARN", "YaRN: ramp from kept to interpolated pairs, attention scaled")
METHODS.register("llama3", "ropext.methods.llama3:LLAMA3", "Llama 3.1 wavelength bands with a smooth blend")
METHODS.register("dprope", "ropext.methods.dprope:DPROPE", "DPRoPE: per pair, the choice that least disturbs angles")

__all__ = ["METHODS", "Method"]
