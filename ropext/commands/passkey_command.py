"""``ropext eval passkey``: pass-key retrieval accuracy per length and depth (README.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from ropext.commands.common import Scaled, evaluate_one
from ropext.commands.options import (
    DeviceOption,
    DtypeOption,
    FactorsOption,
    JsonOption,
    MaxLenOption,
    MethodOption,
    ModelOption,
    ParamOption,
    TargetOption,
)
from ropext.commands.task_options import DepthsOption, TrialsOption


def eval_passkey(
    model: ModelOption = None,
    lengths: Annotated[str | None, typer.Option(help="Comma-separated prompt lengths, e.g. 8k,16k,32k.")] = None,
    max_len: MaxLenOption = None,
    factors: FactorsOption = None,
    method: MethodOption = None,
    target_length: TargetOption = None,
    param: ParamOption = None,
    depths: DepthsOption = "spread",
    trials: TrialsOption = 10,
    seed: Annotated[int, typer.Option(help="Seed of the keys.")] = 0,
    device: DeviceOption = None,
    dtype: DtypeOption = "auto",
    json_out: JsonOption = None,
) -> None:
    """Pass-key retrieval accuracy per length and depth (greedy decoding)."""
    evaluate_one(
        "passkey",
        Scaled(model, factors, method, target_length, param, device, dtype),
        lengths,
        max_len,
        json_out,
        depths=depths,
        trials=trials,
        seed=seed,
    )
