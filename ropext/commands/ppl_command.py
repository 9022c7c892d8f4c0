"""``ropext eval ppl``: perplexity on long documents, per length (README.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from ropext.commands.common import Scaled, evaluate_one
from ropext.commands.defaults import choose_corpus
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
from ropext.commands.task_options import (
    ChunkTokensOption,
    CorpusOption,
    MaxDocsOption,
    ModeOption,
    SkipDocsOption,
    StrideOption,
)


def eval_ppl(
    model: ModelOption = None,
    corpus: CorpusOption = None,
    lengths: Annotated[str | None, typer.Option(help="Comma-separated window lengths, e.g. 8k,16k,32k.")] = None,
    max_len: MaxLenOption = None,
    factors: FactorsOption = None,
    method: MethodOption = None,
    target_length: TargetOption = None,
    param: ParamOption = None,
    max_docs: MaxDocsOption = 10,
    skip_docs: SkipDocsOption = 0,
    mode: ModeOption = "truncate",
    stride: StrideOption = None,
    chunk_tokens: ChunkTokensOption = 4096,
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
        corpus=choose_corpus(corpus),
        max_docs=max_docs,
        skip_docs=skip_docs,
        mode=mode,
        stride=stride,
        chunk_tokens=chunk_tokens,
    )
