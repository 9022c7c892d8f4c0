"""What every closed-form method is: typed parameters plus a pure function of the rotary layout."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ropext.errors import RopextError
from ropext.methods.attention import no_attention
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling

NativeForm = Callable[[RopeScaling], dict[str, Any] | None]
"""Builds transformers' own rope dict (``rope_type`` and its keys, without ``rope_theta``) for a scaling
the method made, from the scaling and its recorded parameters; None where that scaling has none."""
RuntimeFactors = Callable[[int, int, float, int], tuple[float, ...]]
"""``(rotary_dim, original_length, scale, seq_len) -> λ``: the vector of a method whose frequencies follow
the input length."""


@dataclass(frozen=True)
class Method:
    """A closed-form scaling: ``build(layout, target_length, params) -> RopeScaling``, and every fact
    the rest of ropext needs about it (as transformers' ``ROPE_INIT_FUNCTIONS`` entries carry theirs), so
    a plugin method is exported, applied and evaluated exactly like a built-in one."""

    name: str
    params: type
    """Dataclass of the method's parameters; its field docstrings document ``--param`` keys."""
    build: Callable[[RotaryLayout, int, Any], RopeScaling]
    native: NativeForm | None = None
    """Its native transformers form, or None: ropext then writes the exact vector as ``longrope``. A
    static form is used only where transformers computes the scaling's frequencies with it
    (`ropext.model.rope_config` checks); a dynamic method needs one, as no vector can stand for it."""
    attention_default: Callable[[float, int], float] = no_attention
    """``(scale, original_length) -> attention factor`` used when its parameters set none."""
    runtime_factors: RuntimeFactors | None = None
    """For a method whose frequencies follow the input length (dynamic NTK): its λ for a given length."""

    @property
    def dynamic(self) -> bool:
        """Whether the frequencies depend on the input length (the stored factors hold the target's)."""
        return self.runtime_factors is not None

    def __call__(self, layout: RotaryLayout, target_length: int, **params: Any) -> RopeScaling:
        return self.run(layout, target_length, self.params(**params))

    def run(self, layout: RotaryLayout, target_length: int, params: Any) -> RopeScaling:
        if target_length < layout.original_max_position_embeddings and self.name != "none":
            raise RopextError(
                f"target length {target_length} is shorter than model {layout.name}'s original context "
                f"{layout.original_max_position_embeddings}; choose --target-length above it"
            )
        scaling = self.build(layout, target_length, params)
        return scaling.with_provenance(method=self.name, params=dataclasses.asdict(params))

    def parse_params(self, pairs: Iterable[str]) -> Any:
        return parse_params(self.params, pairs, where=f"method {self.name!r}")


def parse_params(params_cls: type, pairs: Iterable[str], where: str) -> Any:
    """``["beta_fast=16", "truncate=false"]`` -> ``params_cls(beta_fast=16.0, truncate=False)``."""
    known = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = typing.get_type_hints(params_cls)
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep:
            raise RopextError(f"--param {pair!r} is not of the form key=value")
        if key not in known:
            names = ", ".join(known) or "none"
            raise RopextError(f"{where} has no parameter {key!r}; its parameters are: {names}")
        values[key] = _convert(raw.strip(), hints[key], key)
    return params_cls(**values)


def _convert(raw: str, hint: Any, key: str) -> Any:
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if type(None) in options and raw.lower() in ("none", "null", ""):
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            if option is bool:
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            if option is int:
                return int(raw)
            if option is float:
                return float(raw)
            if option is str:
                return raw
        except ValueError:
            continue
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise RopextError(f"--param {key}={raw!r}: expected {wanted}")


def scaling_from_factors(
    layout: RotaryLayout,
    target_length: int,
    method: str,
    factors: Iterable[float],
    attention_factor: float = 1.0,
) -> RopeScaling:
    return RopeScaling(
        method=method,
        rope_theta=layout.rope_theta,
        rotary_dim=layout.rotary_dim,
        original_max_position_embeddings=layout.original_max_position_embeddings,
        max_position_embeddings=target_length,
        factors=tuple(factors),
        attention_factor=attention_factor,
    )


def recorded(scaling: RopeScaling, key: str, default: Any) -> Any:
    """A parameter as the method recorded it in the scaling's provenance (``default`` when absent or None)."""
    given = scaling.provenance.get("params")
    value = given.get(key) if isinstance(given, dict) else None
    return default if value is None else value


def recorded_form(scaling: RopeScaling, rope_type: str, defaults: Any, *keys: str) -> dict[str, Any]:
    """A native form whose ``factor`` and ``keys`` are the parameters the method recorded, each of the
    type and with the default it has in the params dataclass instance ``defaults``."""
    form: dict[str, Any] = {
        "rope_type": rope_type,
        "factor": float(recorded(scaling, "factor", scaling.scale)),
        "original_max_position_embeddings": scaling.original_max_position_embeddings,
    }
    for key in keys:
        default = getattr(defaults, key)
        form[key] = type(default)(recorded(scaling, key, default))
    return form


def pair_exponents(rotary_dim: int) -> list[float]:
    """2i/d for each pair i, in float64 (factors are computed in float64, stored as Python floats)."""
    return [2 * i / rotary_dim for i in range(rotary_dim // 2)]
