"""The DeepSpeed config of `ropext finetune`: read a JSON file, let the command line replace a few values,
and refuse what ropext does not run, before any model is loaded.

The built-in default (`DEFAULT_CONFIG`) is recipes/deepspeed/zero3.json without its ``_comment``; a test
keeps the two equal, so ``--deepspeed`` left out means exactly that recipe, even where ropext is installed
without the repository's recipes folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ropext.errors import RopextError

DEFAULT_LR = 2e-5
DEFAULT_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "optimizer": {
        "type": "AdamW",
        "params": {
            "lr": DEFAULT_LR,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "weight_decay": 0.0,
            "torch_adam": True,
        },
    },
    "bf16": {"enabled": True},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
    },
    "steps_per_print": 1000000000,
    "wall_clock_breakdown": False,
}

# Schedulers whose peak rate --lr replaces, and those that need the run's length.
_PEAK_LR_KEYS = {"WarmupLR": "warmup_max_lr", "WarmupDecayLR": "warmup_max_lr", "OneCycle": "cycle_max_lr"}
_TOTAL_STEPS_SCHEDULERS = {"WarmupDecayLR", "WarmupCosineLR"}
_ADAM_TYPES = {"adam", "adamw"}


def load_config(path: Path | None) -> dict[str, Any]:
    """The config as written (a deep copy of the default for None), without ``_``-prefixed comment keys."""
    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    if not path.is_file():
        raise RopextError(f"DeepSpeed config {path} does not exist; start from recipes/deepspeed/zero3.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RopextError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError:
        raise RopextError(f"{path}: not a text file; a DeepSpeed config is JSON") from None
    if not isinstance(data, dict):
        raise RopextError(f"{path}: a DeepSpeed config is a JSON object ({{...}}), got {type(data).__name__}")
    return _without_comments(data)


def _without_comments(data: Any) -> Any:
    # Recipes carry the command that runs them in "_comment"; DeepSpeed has no use for such keys.
    if isinstance(data, dict):
        return {k: _without_comments(v) for k, v in data.items() if not str(k).startswith("_")}
    return data


def _given(value: Any) -> bool:
    # Hugging Face-style configs write "auto" where the trainer fills in a value; ropext treats it as unset.
    return value is not None and value != "auto"


def _positive_int(config: dict[str, Any], key: str, source: str, default: int) -> int:
    value = config.get(key)
    if not _given(value):
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RopextError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def apply_overrides(
    config: dict[str, Any],
    *,
    source: str,
    steps: int,
    lr: float | None = None,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
) -> dict[str, Any]:
    """A copy of ``config`` with the command line's values in place of the file's, validated.

    ``train_batch_size`` is dropped: DeepSpeed derives it from micro batch × accumulation × processes, and a
    stale value in the file would contradict a changed ``--grad-accum`` or ``--gpus``.
    """
    config = copy.deepcopy(config)
    stage = (config.get("zero_optimization") or {}).get("stage")
    if stage != 3:
        raise RopextError(
            f"{source}: zero_optimization.stage is {stage!r}; ropext finetune runs DeepSpeed ZeRO stage 3 "
            '(set "zero_optimization": {"stage": 3})'
        )
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("type"), str):
        raise RopextError(f'{source}: no "optimizer" section with a "type"; see recipes/deepspeed/zero3.json')
    params = optimizer.setdefault("params", {})
    if not isinstance(params, dict):
        raise RopextError(f"{source}: optimizer.params must be an object")

    if micro_batch is not None:
        config["train_micro_batch_size_per_gpu"] = micro_batch
    if grad_accum is not None:
        config["gradient_accumulation_steps"] = grad_accum
    config["train_micro_batch_size_per_gpu"] = _positive_int(config, "train_micro_batch_size_per_gpu", source, 1)
    config["gradient_accumulation_steps"] = _positive_int(config, "gradient_accumulation_steps", source, 1)
    config.pop("train_batch_size", None)

    if lr is not None:
        params["lr"] = lr
    elif not _given(params.get("lr")):
        params["lr"] = DEFAULT_LR
    rate = params["lr"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        raise RopextError(f"{source}: optimizer.params.lr must be a positive number, got {rate!r}")

    scheduler = config.get("scheduler")
    if isinstance(scheduler, dict):
        kind = scheduler.get("type")
        scheduler_params = scheduler.setdefault("params", {})
        peak_key = _PEAK_LR_KEYS.get(kind)
        if peak_key is not None and (lr is not None or not _given(scheduler_params.get(peak_key))):
            scheduler_params[peak_key] = rate
        if kind in _TOTAL_STEPS_SCHEDULERS and not _given(scheduler_params.get("total_num_steps")):
            scheduler_params["total_num_steps"] = steps
    config.setdefault("steps_per_print", DEFAULT_CONFIG["steps_per_print"])
    return config


def micro_batch(config: dict[str, Any]) -> int:
    return int(config["train_micro_batch_size_per_gpu"])


def grad_accum(config: dict[str, Any]) -> int:
    return int(config["gradient_accumulation_steps"])


def precision(config: dict[str, Any]) -> str:
    """``bf16``, ``fp16`` or ``fp32``: the dtype the model's weights are loaded in and trained with."""
    if (config.get("bf16") or {}).get("enabled") is True:
        return "bf16"
    if (config.get("fp16") or {}).get("enabled") is True:
        return "fp16"
    return "fp32"


def for_accelerator(config: dict[str, Any], cpu: bool) -> dict[str, Any]:
    """The config adapted to where it runs. On DeepSpeed's CPU accelerator: float32 (bf16 and fp16
    disabled: CPU bf16 matmuls are slow and fp16 is unsupported) and PyTorch's AdamW instead of
    DeepSpeed's FusedAdam, which is a CUDA kernel."""
    config = copy.deepcopy(config)
    if not cpu:
        return config
    for key in ("bf16", "fp16"):
        if key in config:
            config[key] = {**(config[key] or {}), "enabled": False}
    optimizer = config["optimizer"]
    if str(optimizer.get("type", "")).lower() in _ADAM_TYPES:
        optimizer["params"]["torch_adam"] = True
    return config
