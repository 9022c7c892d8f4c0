"""The one translation between a `RopeScaling` and transformers' rope parameters, both ways.

To transformers: the ``rope_parameters`` dict that makes plain transformers compute exactly the scaling.
A method's own native type (``linear`` for PI, ``yarn``, ``llama3``; its registry entry says which) is
used where transformers' function for it reproduces the scaling's frequencies to float32 rounding and the
config's class accepts it; a dynamic method must have one; any other per-pair vector is ``longrope`` with
an explicit attention factor (``short_factor`` equal to ``long_factor`` when the scaling has no short
vector, so the frequencies do not switch at L0), which fits any vector bit for bit. The dict is written
into a config (the full-attention entry of a per-layer-type config such as Gemma 3's), validated with
the config class's own ``validate_rope``.

Back from transformers: `verify_scaling` reads the buffers of built rotary modules and `verify_folder`
rebuilds them from a saved config.json, and both fail loudly unless they hold the scaling's float32
frequencies and attention factor. `ropext.model.apply` and `ropext.export` both use this module and
never each other.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ropext.errors import RopextError
from ropext.methods import method_of
from ropext.methods.attention import longrope_attention
from ropext.model.layout import rope_dict, text_config
from ropext.scaling import RopeScaling

if TYPE_CHECKING:
    import torch
    from torch import nn

NATIVE_RTOL = 1e-6
"""How closely a native type's inverse frequencies must match ``scaling.inv_freq()`` to be chosen."""
DYNAMIC_RTOL = 1e-5
"""Dynamic NTK raises a new base to a power in float32, which rounds a little differently."""
_KEPT = ("partial_rotary_factor",)
"""Keys of the model's own rope dict that a scaling leaves as they are."""


# ---------------------------------------------------------------------------- RopeScaling -> rope dict


def refuse_start_tokens(scaling: RopeScaling) -> None:
    """LongRoPE's n̂ has no place in any config format: say what to do instead."""
    if scaling.start_tokens > 0:
        raise RopextError(
            f"start_tokens (n̂ = {scaling.start_tokens}) cannot be expressed in a Hugging Face or vLLM config "
            "(no rope type keeps the original frequencies for the first positions); search with "
            "`--param search_start_tokens=false` for an exportable scaling, or evaluate this one with "
            "`ropext eval ppl|passkey --factors FILE`"
        )


def rope_parameters(scaling: RopeScaling, current: dict[str, Any], config: Any = None) -> dict[str, Any]:
    """The dict `apply_scaling` writes: the method's native closed form where exact, else `exact_rope_parameters`.

    ``current`` is the model's rope dict before scaling (its ``partial_rotary_factor`` is kept); ``config``,
    when given, is the (text) config the dict goes into (a native type its class refuses is not chosen)."""
    return closed_form_rope_parameters(scaling, current, config) or exact_rope_parameters(scaling, current)


def exact_rope_parameters(scaling: RopeScaling, current: dict[str, Any]) -> dict[str, Any]:
    """``default`` for the identity, the method's native form for a dynamic one, else the vector as longrope."""
    kept = {k: current[k] for k in _KEPT if k in current}
    if scaling.is_dynamic:
        return {**kept, "rope_theta": scaling.rope_theta, **_dynamic_form(scaling)}
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


def _dynamic_form(scaling: RopeScaling) -> dict[str, Any]:
    method = method_of(scaling.method)
    form = method.native(scaling) if method is not None and method.native is not None else None
    if form is None:
        raise RopextError(
            f"method {scaling.method!r} changes its frequencies with the input length but names no native "
            "transformers rope type, so no config can carry it; give its Method a `native` form"
        )
    return form


def closed_form_rope_parameters(
    scaling: RopeScaling, current: dict[str, Any], config: Any = None
) -> dict[str, Any] | None:
    """The method's native static dict (e.g. linear, yarn, llama3), if it has one, transformers turns it into
    ``scaling``'s frequencies (rtol 1e-6) and attention factor, and ``config``'s class accepts it."""
    if scaling.is_dynamic or scaling.is_identity or scaling.short_factors is not None:
        return None  # the closed-form types hold one static vector
    method = method_of(scaling.method)
    form = method.native(scaling) if method is not None and method.native is not None else None
    if form is None:
        return None
    kept = {k: current[k] for k in _KEPT if k in current}
    candidate = {**kept, "rope_theta": scaling.rope_theta, **form}
    if _computes(candidate, scaling) and _accepted_by(config, candidate):
        return candidate
    return None


def native_rope_parameters(
    scaling: RopeScaling, current_rope_dict: dict[str, Any], *, config: Any = None
) -> dict[str, Any]:
    """The ``rope_parameters`` dict an exported config carries, so plain transformers and vLLM compute ``scaling``.

    As `rope_parameters`, with longrope's vLLM keys (`longrope_parameters`); a dynamic scaling whose
    native type ``config``'s class refuses (Phi-3 accepts only longrope) is refused."""
    refuse_start_tokens(scaling)
    if scaling.is_dynamic or scaling.is_identity:
        rope = exact_rope_parameters(scaling, current_rope_dict)
        if not _accepted_by(config, rope):
            raise RopextError(
                f"model type {config.model_type!r} does not accept rope type {rope['rope_type']!r}, and "
                f"{scaling.method} cannot be written as longrope (its frequencies change with the input length); "
                "export a static method or searched factors instead"
            )
        return rope
    return closed_form_rope_parameters(scaling, current_rope_dict, config) or longrope_parameters(
        scaling, current_rope_dict
    )


def longrope_parameters(scaling: RopeScaling, current_rope_dict: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``longrope`` dict for any static vector, readable by vLLM too.

    vLLM's longrope ignores ``attention_factor``: it scales cos/sin by ``short_mscale``/``long_mscale``,
    defaulting both to LongRoPE's √(1 + ln s / ln L0). Where the scaling's attention factor differs from
    that, both keys are written as well (transformers then warns that it does not use them).
    """
    rope = exact_rope_parameters(scaling, current_rope_dict)
    if rope["rope_type"] != "longrope":  # the identity
        return rope
    vllm_default = longrope_attention(scaling.scale, scaling.original_max_position_embeddings)
    if not math.isclose(scaling.attention_factor, vllm_default, rel_tol=1e-12):
        rope["short_mscale"] = rope["long_mscale"] = scaling.attention_factor
    return rope


def _computes(rope: dict[str, Any], scaling: RopeScaling) -> bool:
    """Whether transformers' own function for ``rope`` gives ``scaling``'s frequencies and attention factor."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    function = ROPE_INIT_FUNCTIONS.get(rope["rope_type"])
    if function is None:
        return False
    try:
        with quiet_transformers_logs():
            inv_freq, attention = function(_probe_config(rope, scaling), None)
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return False
    expected = scaling.inv_freq()
    return (
        inv_freq.shape == expected.shape
        and torch.allclose(inv_freq.float(), expected, rtol=NATIVE_RTOL, atol=0)
        and math.isclose(float(attention), scaling.attention_factor, rel_tol=1e-12)
    )


def _probe_config(rope: dict[str, Any], scaling: RopeScaling) -> Any:
    """A minimal config whose heads rotate exactly ``scaling.rotary_dim`` dims with ``rope``."""
    from transformers import LlamaConfig

    params = {k: v for k, v in copy.deepcopy(rope).items() if k != "partial_rotary_factor"}
    return LlamaConfig(
        vocab_size=8,
        hidden_size=scaling.rotary_dim,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=scaling.rotary_dim,
        max_position_embeddings=scaling.max_position_embeddings,
        rope_parameters=params,
    )


# ---------------------------------------------------------------------------- into a config


def set_rope_dict(config: Any, rope: dict[str, Any]) -> None:
    """Put ``rope`` where `rope_dict` reads it (the full-attention entry of a per-layer-type config)."""
    _, layer_type = rope_dict(config)
    if layer_type is None:
        config.rope_parameters = rope
    else:
        config.rope_parameters = {**config.rope_parameters, layer_type: rope}


def write_scaling(config: Any, scaling: RopeScaling) -> None:
    """Write ``scaling`` into a (text) config in place (`rope_parameters`), with the context lengths that go
    with it. `ropext export` writes the same, so a patched model and its checkpoint compute the same logits."""
    current, _ = rope_dict(config)
    set_rope_dict(config, rope_parameters(scaling, current, config))
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


def rope_refusal(config: Any) -> str | None:
    """Why ``config``'s class refuses its rope parameters (first line of transformers' error), or None.

    Some architectures accept only certain rope types (Phi-3: longrope)."""
    validate = getattr(config, "validate_rope", None)
    if validate is None:
        return None
    try:
        validate()
    except (ValueError, KeyError, TypeError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def check_accepted(config: Any, scaling: RopeScaling) -> None:
    """Refuse, in one line, a config whose class does not accept the scaling just written into it."""
    reason = rope_refusal(config)
    if reason is not None:
        raise RopextError(
            f"model type {config.model_type!r} cannot carry a {scaling.method} scaling ({reason}); "
            "use a static method or searched factors instead"
        )


def _accepted_by(config: Any, rope: dict[str, Any]) -> bool:
    """Whether ``config``'s class validates ``rope``; True without a config."""
    if getattr(config, "validate_rope", None) is None:
        return True
    probe = copy.deepcopy(config)
    set_rope_dict(probe, rope)
    with quiet_transformers_logs():
        return rope_refusal(probe) is None


@contextmanager
def quiet_transformers_logs() -> Iterator[None]:
    """transformers' warnings about configs ropext builds only to check them would mislead the user."""
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


# ---------------------------------------------------------------------------- rope dict -> RopeScaling


def _difference(
    name: str, inv_freq: torch.Tensor, attention: Any, scaling: RopeScaling, lengths: list[int | None], rtol: float
) -> tuple[str, str] | None:
    """(what, description) of how a rotary module's buffers differ from the scaling at any of ``lengths``."""
    import torch

    candidates = [scaling.inv_freq(length, device=inv_freq.device) for length in lengths]
    expected = candidates[0]
    if inv_freq.dtype != torch.float32:
        return "dtype", f"{name}.inv_freq is {inv_freq.dtype}, not float32: RoPE must be computed in float32"
    if inv_freq.shape != expected.shape or not any(
        torch.allclose(inv_freq, candidate, rtol=rtol, atol=0) for candidate in candidates
    ):
        worst = (inv_freq - expected).abs().max().item() if inv_freq.shape == expected.shape else float("nan")
        return "frequencies", f"{name}.inv_freq differs from the scaling's by up to {worst:.3g}"
    # transformers' dynamic type never scales attention.
    expected_attention = 1.0 if scaling.is_dynamic else scaling.attention_factor
    if attention is None or abs(float(attention) - expected_attention) > 1e-6 * expected_attention:
        return "attention", f"{name} scales attention by {attention}, not {expected_attention}"
    return None


def verify_scaling(model: nn.Module, scaling: RopeScaling) -> None:
    """Fail loudly unless every rotary module of ``model`` holds float32 ``scaling.inv_freq()`` and its
    attention factor.

    The check reads the buffers the attention code uses, so it catches a transformers version that
    ignores or reinterprets a rope parameter, and RoPE buffers cast to bf16 by a careless ``.to()``.
    """
    from ropext.model.rotary import inner_rotary, rotary_modules

    _, layer_type = rope_dict(text_config(model.config))
    prefix = f"{layer_type}_" if layer_type else ""
    # Dynamic NTK's buffer follows the last input length, and longrope's switches between the short
    # and long vector per call; the rest hold one vector.
    lengths: list[int | None] = [None]
    if scaling.short_factors is not None or scaling.is_dynamic:
        lengths.insert(0, scaling.original_max_position_embeddings)
    for name, module in rotary_modules(model):
        inner = inner_rotary(module)
        inv_freq = getattr(inner, f"{prefix}inv_freq")
        attention = getattr(inner, f"{prefix}attention_scaling")
        if scaling.is_dynamic:
            inv_freq = getattr(inner, f"{prefix}original_inv_freq", inv_freq)
        found = _difference(name, inv_freq, attention, scaling, lengths, NATIVE_RTOL)
        if found is None:
            continue
        what, description = found
        if what == "dtype":
            raise RopextError(description)
        advice = (
            "; this transformers version builds rotary frequencies differently; please report it"
            if what == "frequencies"
            else ""
        )
        raise RopextError(f"applying {scaling.method} failed: {description}{advice}")


def verify_folder(folder: Path, scaling: RopeScaling, rotary_classes: list[type]) -> None:
    """Rebuild each rotary module class from the saved config.json, as plain transformers will, and
    check its float32 frequencies and attention factor below and above the original length."""
    import torch
    import transformers
    from transformers import AutoConfig

    with quiet_transformers_logs():
        config = text_config(AutoConfig.from_pretrained(folder))
    _, layer_type = rope_dict(config)
    original, target = scaling.original_max_position_embeddings, scaling.max_position_embeddings
    lengths = sorted({original, target} | ({(original + target) // 2} if scaling.is_dynamic else set()))
    rtol = DYNAMIC_RTOL if scaling.is_dynamic else NATIVE_RTOL
    prefix = f"{layer_type}_" if layer_type else ""
    kwargs = {"layer_type": layer_type} if layer_type else {}
    for cls in rotary_classes:
        with torch.device("cpu"), quiet_transformers_logs():
            module = cls(config)
        # The target length twice, as generation calls it: transformers 5.17's per-layer-type longrope
        # fails on the second input longer than L0.
        for length in [*lengths, target]:
            try:
                with torch.no_grad():
                    module(torch.zeros(1, 1, 1), torch.tensor([[length - 1]]), **kwargs)
            except Exception as err:
                reason = f"{type(err).__name__}: {str(err).splitlines()[0]}" if str(err) else type(err).__name__
                raise RopextError(
                    f"transformers {transformers.__version__} cannot run the exported config: {cls.__name__} "
                    f"fails on a {length}-token input ({reason}); export with a newer transformers"
                ) from None
            inv_freq = getattr(module, f"{prefix}inv_freq")
            attention = getattr(module, f"{prefix}attention_scaling", getattr(module, "attention_scaling", None))
            if _difference(cls.__name__, inv_freq, attention, scaling, [length], rtol) is not None:
                raise RopextError(
                    f"the exported config does not reproduce the {scaling.method} scaling: {cls.__name__} built "
                    f"from it computes other frequencies or attention factor for {length} tokens; "
                    "this transformers version reads rope parameters differently; please report it"
                )
