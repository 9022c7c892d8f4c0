"""`ropext export`: a rescaled model as a plain Hugging Face folder that runs without ropext.

The folder holds the weights (safetensors; a GGUF source is dequantised), the tokenizer, config.json
whose ``rope_parameters`` carry the scaling in a type transformers (and vLLM) implement natively, and
the scaling's YAML beside them. A closed-form scaling keeps its own type where that type reproduces
its frequencies to float32 rounding (``linear`` for PI, ``yarn``, ``llama3``, ``dynamic``); every other
per-pair vector is ``longrope`` with an explicit attention factor, which any vector fits bit for bit. Each choice is
checked by computing the frequencies with transformers' own ``ROPE_INIT_FUNCTIONS``, and the written
folder is checked again by rebuilding the model's rotary module from the saved config.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.permissions import follow_umask
from ropext.scaling import RopeScaling

YAML_NAME = "rope_scaling.yaml"
"""The scaling's YAML, written beside the exported model."""
NATIVE_RTOL = 1e-6
"""How closely a native type's inverse frequencies must match ``scaling.inv_freq()`` to be chosen."""
DYNAMIC_RTOL = 1e-5
"""Dynamic NTK raises a new base to a power in float32, which rounds a little differently."""
EXPORT_DTYPES = ("auto", "bf16", "fp16", "fp32")


def refuse_start_tokens(scaling: RopeScaling) -> None:
    """LongRoPE's n̂ has no place in any config format: say what to do instead."""
    if scaling.start_tokens > 0:
        raise RopextError(
            f"start_tokens (n̂ = {scaling.start_tokens}) cannot be expressed in a Hugging Face or vLLM config "
            "(no rope type keeps the original frequencies for the first positions); search with "
            "`--param search_start_tokens=false` for an exportable scaling, or evaluate this one with "
            "`ropext eval ppl|passkey --factors FILE`"
        )


# ---------------------------------------------------------------------------- the rope dict


def native_rope_parameters(
    scaling: RopeScaling, current_rope_dict: dict[str, Any], *, config: Any = None
) -> dict[str, Any]:
    """The ``rope_parameters`` dict with which plain transformers computes ``scaling``.

    ``current_rope_dict`` is the model's rope dict before scaling (its ``partial_rotary_factor`` is
    kept). ``config``, when given, is the (text) config the dict will go into: a native type its
    class refuses (Phi-3 accepts only longrope) falls back to longrope.
    """
    from ropext.model.apply import rope_parameters_for

    refuse_start_tokens(scaling)
    if scaling.is_dynamic or scaling.is_identity:
        rope = rope_parameters_for(scaling, current_rope_dict)
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


def closed_form_rope_parameters(
    scaling: RopeScaling, current_rope_dict: dict[str, Any], config: Any = None
) -> dict[str, Any] | None:
    """The native closed-form dict (linear, yarn, llama3) that transformers turns into ``scaling``'s
    frequencies (rtol 1e-6) and attention factor, if there is one and ``config``'s class accepts it.

    `apply_scaling` uses it too, so a patched model and its exported checkpoint compute the same."""
    if scaling.is_dynamic or scaling.is_identity:
        return None
    candidate = _closed_form_candidate(scaling, current_rope_dict)
    if candidate is not None and _computes(candidate, scaling) and _accepted_by(config, candidate):
        return candidate
    return None


def longrope_parameters(scaling: RopeScaling, current_rope_dict: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``longrope`` dict for any static vector, readable by vLLM too.

    vLLM's longrope ignores ``attention_factor``: it scales cos/sin by ``short_mscale``/``long_mscale``,
    defaulting both to √(1 + ln s / ln L0). Where the scaling's attention factor differs from that,
    both keys are written as well (transformers then warns that it does not use them).
    """
    from ropext.model.apply import rope_parameters_for

    rope = rope_parameters_for(scaling, current_rope_dict)
    if rope["rope_type"] != "longrope":  # the identity
        return rope
    if not math.isclose(scaling.attention_factor, _vllm_longrope_mscale(scaling), rel_tol=1e-12):
        rope["short_mscale"] = rope["long_mscale"] = scaling.attention_factor
    return rope


def _vllm_longrope_mscale(scaling: RopeScaling) -> float:
    s = scaling.scale
    if s <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(s) / math.log(scaling.original_max_position_embeddings))


def _closed_form_candidate(scaling: RopeScaling, current: dict[str, Any]) -> dict[str, Any] | None:
    """The native dict the scaling's method would have, from its provenance parameters (None: none)."""
    if scaling.short_factors is not None:
        return None  # the closed-form types hold one vector
    given = scaling.provenance.get("params")
    given = given if isinstance(given, dict) else {}

    def param(key: str, default: Any) -> Any:
        value = given.get(key)
        return default if value is None else value

    factor = param("factor", scaling.scale)
    kept = {k: current[k] for k in ("partial_rotary_factor",) if k in current}
    base = {**kept, "rope_theta": scaling.rope_theta}
    original = scaling.original_max_position_embeddings
    if scaling.method in ("pi", "linear"):
        return {**base, "rope_type": "linear", "factor": float(scaling.factors[0])}
    if scaling.method == "yarn":
        return {
            **base,
            "rope_type": "yarn",
            "factor": float(factor),
            "original_max_position_embeddings": original,
            "beta_fast": float(param("beta_fast", 32.0)),
            "beta_slow": float(param("beta_slow", 1.0)),
            "attention_factor": float(scaling.attention_factor),
            "truncate": bool(param("truncate", True)),
        }
    if scaling.method == "llama3":
        return {
            **base,
            "rope_type": "llama3",
            "factor": float(factor),
            "original_max_position_embeddings": original,
            "low_freq_factor": float(param("low_freq_factor", 1.0)),
            "high_freq_factor": float(param("high_freq_factor", 4.0)),
        }
    return None


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


def _accepted_by(config: Any, rope: dict[str, Any]) -> bool:
    """Whether ``config``'s class validates ``rope`` (Phi-3's accepts only longrope); True without a config."""
    if getattr(config, "validate_rope", None) is None:
        return True
    probe = copy.deepcopy(config)
    set_rope_dict(probe, rope)
    try:
        with quiet_transformers_logs():
            probe.validate_rope()
    except (ValueError, KeyError, TypeError):
        return False
    return True


def set_rope_dict(config: Any, rope: dict[str, Any]) -> None:
    """Put ``rope`` where `rope_dict` reads it (the full-attention entry of a per-layer-type config)."""
    from ropext.model.layout import rope_dict

    _, layer_type = rope_dict(config)
    if layer_type is None:
        config.rope_parameters = rope
    else:
        config.rope_parameters = {**config.rope_parameters, layer_type: rope}


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
    from ropext.model.apply import configure, rotary_modules
    from ropext.model.layout import rope_dict, text_config
    from ropext.model.loading import load_layout, load_model, load_tokenizer, materialize

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
    configure(config, scaling)  # max_position_embeddings (and Phi-3's top-level L0) as ropext applies them
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
        verify_exported_config(staging, scaling, rotary_classes)
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


def verify_exported_config(folder: Path, scaling: RopeScaling, rotary_classes: list[type]) -> None:
    """Rebuild each rotary module class from the saved config.json, as plain transformers will, and
    check its float32 frequencies and attention factor below and above the original length."""
    import torch
    import transformers
    from transformers import AutoConfig

    from ropext.model.layout import rope_dict, text_config

    with quiet_transformers_logs():
        config = text_config(AutoConfig.from_pretrained(folder))
    _, layer_type = rope_dict(config)
    original, target = scaling.original_max_position_embeddings, scaling.max_position_embeddings
    lengths = sorted({original, target} | ({(original + target) // 2} if scaling.is_dynamic else set()))
    rtol = DYNAMIC_RTOL if scaling.is_dynamic else NATIVE_RTOL
    expected_attention = 1.0 if scaling.is_dynamic else scaling.attention_factor
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
            expected = scaling.inv_freq(length)
            if (
                inv_freq.dtype != torch.float32
                or inv_freq.shape != expected.shape
                or not torch.allclose(inv_freq, expected, rtol=rtol, atol=0)
                or attention is None
                or not math.isclose(float(attention), expected_attention, rel_tol=1e-6)
            ):
                raise RopextError(
                    f"the exported config does not reproduce the {scaling.method} scaling: {cls.__name__} built "
                    f"from it computes other frequencies or attention factor for {length} tokens; "
                    "this transformers version reads rope parameters differently; please report it"
                )


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
