"""``ropext eval ppl``: perplexity on long documents, per length (README.md)."""

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


def eval_ppl(
    model: ModelOption,
    corpus: Annotated[
        str, typer.Option(help="Files/folder (.txt .jsonl[.gz] .parquet), hub dataset, or python-stdlib.")
    ],
    lengths: Annotated[str | None, typer.Option(help="Comma-separated window lengths, e.g. 8k,16k,32k.")] = None,
    max_len: MaxLenOption = None,
    factors: FactorsOption = None,
    method: MethodOption = None,
    target_length: TargetOption = None,
    param: ParamOption = None,
    max_docs: Annotated[int, typer.Option(min=1, help="At most this many documents.")] = 10,
    skip_docs: Annotated[int, typer.Option(min=0, help="Skip this many long-enough documents first.")] = 0,
    mode: Annotated[str, typer.Option(help="truncate (first L tokens per document) or sliding.")] = "truncate",
    stride: Annotated[
        str | None, typer.Option(help="Sliding mode: tokens between windows, e.g. 4k (default L/2).")
    ] = None,
    chunk_tokens: Annotated[int, typer.Option(min=1, help="Positions per chunk of the loss.")] = 4096,
    device: DeviceOption = None,
    dtype: DtypeOption = "auto",
    json_out: JsonOption = None,
) -> None:
    """Perplexity on the first L tokens of long documents (or sliding windows), per length."""
    evaluate_one(
        "ppl",
        Scaled(model, factors, method, target_length, param, device, dtype),
        lengths,
        max_len,
        json_out,
        corpus=corpus,
        max_docs=max_docs,
        skip_docs=skip_docs,
        mode=mode,
        stride=stride,
        chunk_tokens=chunk_tokens,
    )
