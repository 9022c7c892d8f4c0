"""``ropext export``: write a rescaled model as a Hugging Face folder that plain transformers and vLLM load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ropext.commands.common import console
from ropext.commands.options import ModelOption


def export(
    factors: Annotated[Path, typer.Option("--factors", "-f", help="Scaling YAML from `ropext search`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the model into.")],
    model: ModelOption = None,
    dtype: Annotated[
        str, typer.Option(help="auto (as the source stores it; float32 for GGUF), bf16, fp16 or fp32.")
    ] = "auto",
    device: Annotated[str, typer.Option(help="Where to load the weights while exporting: cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Replace --out when it exists and is not empty.")] = False,
) -> None:
    """Write the model rescaled by --factors as a Hugging Face folder whose config carries the scaling natively."""
    from ropext.export import YAML_NAME, export_model
    from ropext.paths import check_output_folder
    from ropext.scaling import RopeScaling

    check_output_folder(out, "--out", staged_beside=True)
    from ropext.model.device import check_device

    device = check_device(device)
    scaling = RopeScaling.load(factors)
    from ropext.commands.defaults import choose_model

    model = choose_model(model, factors)
    with console().status(f"exporting {model}"):
        folder = export_model(model, scaling, out, dtype=dtype, force=force, device=device)
    config = json.loads((folder / "config.json").read_text())
    rope, max_positions = _rope_summary(config)
    typer.echo(
        f"wrote {folder}: {scaling.method} scaling as rope_type {rope.get('rope_type', '?')}, "
        f"max_position_embeddings {max_positions}, dtype {config.get('dtype', config.get('torch_dtype', '?'))}; "
        f"scaling in {folder / YAML_NAME}"
    )


def _rope_summary(config: dict) -> tuple[dict, object]:
    """The rescaled rope dict of a saved config.json, and its max_position_embeddings (multimodal configs nest both)."""
    holder = config if "rope_parameters" in config else config.get("text_config", {})
    rope = holder.get("rope_parameters") or {}
    if "rope_type" not in rope and isinstance(rope.get("full_attention"), dict):
        rope = rope["full_attention"]
    return rope, holder.get("max_position_embeddings", "?")
