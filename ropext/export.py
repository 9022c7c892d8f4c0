"""`ropext export`: a rescaled model as a plain Hugging Face folder that runs without ropext.

The folder holds the weights (safetensors; a GGUF source is dequantised), the tokenizer, config.json
whose ``rope_parameters`` carry the scaling in a type transformers (and vLLM) implement natively, and
the scaling's YAML beside them. `ropext.model.rope_config` chooses the dict (a closed-form method keeps
its native type where that type reproduces its frequencies, any other vector is ``longrope``) and checks
the written folder by rebuilding the model's rotary module from the saved config.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.model.layout import rope_dict, text_config
from ropext.model.rope_config import (
    native_rope_parameters,
    quiet_transformers_logs,
    refuse_start_tokens,
    set_rope_dict,
    verify_folder,
    write_scaling,
)
from ropext.permissions import follow_umask
from ropext.scaling import RopeScaling

YAML_NAME = "rope_scaling.yaml"
"""The scaling's YAML, written beside the exported model."""
EXPORT_DTYPES = ("auto", "bf16", "fp16", "fp32")


# ---------------------------------------------------------------------------- the folder


def export_model(
    model_spec: str,
    scaling: RopeScaling,
    out_dir: str | Path,
    dtype: str | None = None,
    force: bool = False,
    device: str = "cpu",
) -> Path:
    """Write ``model_spec`` rescaled by ``scaling`` to ``out_dir`` as a Hugging Face folder; returns it.

    ``dtype``: auto (None; as the source stores it, float32 for GGUF), bf16, fp16 or fp32. The folder
    is assembled beside ``out_dir`` and renamed into place once complete and verified.
    """
    from ropext.model.loading import load_layout, load_model, load_tokenizer, materialize
    from ropext.model.rotary import rotary_modules

    refuse_start_tokens(scaling)
    torch_dtype = _export_dtype(dtype)
    out = Path(out_dir).expanduser()
    _check_destination(out, force)
    source, layout = load_layout(model_spec)
    scaling.check_matches(layout, source=f"the {scaling.method} scaling")
    _refuse_source_folder(source, out)
    model = load_model(source, device=device, dtype=torch_dtype)
    tokenizer = load_tokenizer(source)

    config = text_config(model.config)
    current, _ = rope_dict(config)
    write_scaling(config, scaling)  # max_position_embeddings (and Phi-3's top-level L0) as ropext applies them
    rope = native_rope_parameters(scaling, current, config=config)
    set_rope_dict(config, rope)
    rotary_classes = list(dict.fromkeys(type(module) for _, module in rotary_modules(model)))
    folder = materialize(source)
    keep_generation_config = _has_generation_config(folder)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        with quiet_transformers_logs():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        if not keep_generation_config:
            (staging / "generation_config.json").unlink(missing_ok=True)
        _write_legacy_rope_scaling(staging / "config.json")
        scaling.save(staging / YAML_NAME)
        verify_folder(staging, scaling, rotary_classes)
        follow_umask(staging)  # safetensors writes private 0600 files, mkdtemp a 0700 folder
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _export_dtype(name: str | None) -> Any:
    from ropext.model.loading import resolve_dtype

    if name is None or name == "auto":
        return "auto"
    if name not in ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32"):
        raise RopextError(f"unknown --dtype {name!r}; use one of {', '.join(EXPORT_DTYPES)}")
    return resolve_dtype(name, "cpu")


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RopextError(f"--out {out} is a file; give a folder to write the model into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RopextError(f"--out folder {out} exists and is not empty; pass --force to replace it")


def _refuse_source_folder(source: Any, out: Path) -> None:
    if not source.is_local:
        return
    model_folder = Path(source.path).resolve()
    target = out.resolve()
    if target == model_folder or target in model_folder.parents:
        raise RopextError(f"--out {out} holds the source model {source.spec}; write the export to another folder")


def _has_generation_config(folder_source: Any) -> bool:
    if folder_source.is_local:
        return (Path(folder_source.path) / "generation_config.json").is_file()
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_pretrained(folder_source.path)
    except (OSError, ValueError):
        return False
    return True


def _rope_holders(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every (sub-)config in a config.json that has ``rope_parameters`` (multimodal configs nest them)."""
    if isinstance(data.get("rope_parameters"), dict):
        yield data
    for value in data.values():
        if isinstance(value, dict):
            yield from _rope_holders(value)


def _write_legacy_rope_scaling(config_path: Path) -> None:
    """Beside a longrope ``rope_parameters``, the same dict under the legacy key ``rope_scaling`` with
    ``"type": "longrope"`` (vLLM and older tools read it), and ``rope_theta`` at the top level.

    transformers prefers ``rope_scaling`` when both are present, so the two must stay identical. Configs
    with one rope dict per layer type get no legacy key: what it meant there differs per model (Gemma 3
    merges it into the full-attention dict, the generic code replaces the whole nested dict), so a
    guess could silently rescale the sliding-window layers too.
    """
    data = json.loads(config_path.read_text())
    changed = False
    for holder in _rope_holders(data):
        params = holder["rope_parameters"]
        if params.get("rope_type") != "longrope":
            continue
        holder["rope_scaling"] = {**copy.deepcopy(params), "type": "longrope"}
        holder.setdefault("rope_theta", params["rope_theta"])
        changed = True
    if changed:
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an existing ``out`` (empty, or replaced with --force) is
    moved aside first and deleted only after the rename."""
    aside = None
    if out.exists():
        aside = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, aside)
    try:
        os.replace(staging, out)
    except BaseException:
        if aside is not None:
            os.replace(aside, out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
