"""The rotary layout of a model, read from its transformers config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ropext.errors import RopextError

# Gemma 3 and similar models keep one RoPE dict per attention type; context extension rescales the
# global (full-attention) layers only, since sliding-window layers never see distant positions.
EXTENDED_LAYER_TYPE = "full_attention"


@dataclass(frozen=True)
class RotaryLayout:
    """What a scaling method needs to know about a model's RoPE."""

    name: str
    """How the model was named on the command line (for messages and provenance)."""
    model_type: str
    head_dim: int
    rotary_dim: int
    """Rotated dims per head: head_dim × partial_rotary_factor."""
    rope_theta: float
    original_max_position_embeddings: int
    layer_type: str | None = None
    """Key of the rope dict that is rescaled when the config keeps one per layer type, else None."""

    @property
    def pairs(self) -> int:
        return self.rotary_dim // 2


def text_config(config: Any) -> Any:
    """The language-model part of a config (multimodal configs nest it)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def rope_dict(config: Any) -> tuple[dict[str, Any], str | None]:
    """The rope parameters that context extension changes, and the layer type they belong to."""
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or not params:
        raise RopextError(
            f"model type {getattr(config, 'model_type', '?')!r} has no rotary position embedding (RoPE); "
            "ropext rescales RoPE only"
        )
    if "rope_theta" in params or "rope_type" in params:
        return params, None
    if EXTENDED_LAYER_TYPE in params and isinstance(params[EXTENDED_LAYER_TYPE], dict):
        return params[EXTENDED_LAYER_TYPE], EXTENDED_LAYER_TYPE
    raise RopextError(
        f"cannot tell which RoPE parameters of model type {config.model_type!r} to rescale "
        f"(layer types: {', '.join(params)})"
    )


def read_layout(config: Any, name: str = "model") -> RotaryLayout:
    config = text_config(config)
    params, layer_type = rope_dict(config)
    if "rope_theta" not in params:
        raise RopextError(f"model {name}: its RoPE parameters have no rope_theta")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    rotary_dim = int(head_dim * partial)
    original = (
        params.get("original_max_position_embeddings")
        or getattr(config, "original_max_position_embeddings", None)  # Phi-3 keeps it at the top level
    )
    rope_type = params.get("rope_type", "default")
    if original is None and rope_type == "linear" and params.get("factor"):
        # transformers' linear type stretches every position by `factor` over max_position_embeddings
        # (how ropext writes PI, and how linear-scaled checkpoints advertise their length).
        original = round(config.max_position_embeddings / params["factor"])
    if original is None and rope_type == "dynamic":
        original = config.max_position_embeddings  # dynamic NTK measures inputs against it
    if original is None:
        if rope_type != "default":
            raise RopextError(
                f"model {name} already carries a {params['rope_type']} scaling but its config does not say "
                "its original context length; add original_max_position_embeddings to its rope_parameters"
            )
        original = config.max_position_embeddings
    return RotaryLayout(
        name=name,
        model_type=config.model_type,
        head_dim=int(head_dim),
        rotary_dim=rotary_dim,
        rope_theta=float(params["rope_theta"]),
        original_max_position_embeddings=int(original),
        layer_type=layer_type,
    )
