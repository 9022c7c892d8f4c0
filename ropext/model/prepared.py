"""A model ready to evaluate: loaded, on its device, with the requested scaling applied and verified."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.model.apply import apply_scaling
from ropext.model.layout import RotaryLayout, rope_dict
from ropext.model.loading import (
    ModelSource,
    default_device,
    load_layout,
    load_model,
    load_tokenizer,
    resolve_dtype,
)
from ropext.scaling import RopeScaling


def choose_scaling(
    layout: RotaryLayout,
    factors: Path | None = None,
    method: str | None = None,
    target_length: int | None = None,
    params: list[str] | None = None,
) -> RopeScaling | None:
    """The scaling named by ``--factors FILE`` or ``--method NAME --target-length L``; None for neither."""
    if factors is not None and method is not None:
        raise RopextError("give either --factors FILE or --method NAME, not both")
    if factors is not None:
        scaling = RopeScaling.load(factors)
        scaling.check_matches(layout, source=str(factors))
        return scaling
    if method is None:
        if params:
            raise RopextError("--param needs --method")
        return None
    from ropext.methods import METHODS

    chosen = METHODS.get(method)
    if target_length is None:
        raise RopextError(f"--method {method} needs --target-length (e.g. --target-length 32k)")
    return chosen.run(layout, target_length, chosen.parse_params(params or []))


@dataclass
class PreparedModel:
    source: ModelSource
    layout: RotaryLayout
    model: Any
    tokenizer: Any
    scaling: RopeScaling | None
    device: str

    @property
    def label(self) -> str:
        """What runs: the applied scaling's method, the rope type a checkpoint's own config carries (a
        fine-tuned or exported model), or ``original``."""
        if self.scaling is not None:
            return self.scaling.method
        rope, _ = rope_dict(self.model.config)
        kind = rope.get("rope_type") or rope.get("type") or "default"
        return "original" if kind == "default" else f"its config's {kind}"


def prepare_model(
    spec: str,
    scaling: RopeScaling | None,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str = "sdpa",
    layout: tuple[ModelSource, RotaryLayout] | None = None,
) -> PreparedModel:
    source, rotary = layout or load_layout(spec)
    device = device or default_device()
    model = load_model(
        source, device=device, dtype=resolve_dtype(dtype, device), attn_implementation=attn_implementation
    )
    if scaling is not None:
        apply_scaling(model, scaling, source=f"{scaling.method} scaling")
    return PreparedModel(source, rotary, model, load_tokenizer(source), scaling, device)
