"""``ropext eval ruler``: RULER's synthetic long-context tasks (docs/ruler.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ropext.commands.common import Scaled, evaluate_one
from ropext.commands.options import (
    DeviceOption,
    DtypeOption,
    FactorsOption,
    MaxLenOption,
    MethodOption,
    ModelOption,
    ParamOption,
    TargetOption,
)
from ropext.commands.task_options import (
    BatchSizeOption,
    ChatTemplateOption,
    HaystackCorpusOption,
    MaxNewTokensOption,
    QaDataOption,
    SamplesOption,
)


def ruler_task_table() -> Any:
    """RULER's tasks as a table (what each tests, what data it needs), for ``ropext ls`` and ``--tasks help``."""
    from rich.table import Table

    from ropext.evaluate.ruler.tasks import SPECS

    table = Table(title="RULER tasks (ropext eval ruler --tasks …)", show_header=True, header_style="bold")
    for column in ("task", "what it tests", "data needed"):
        table.add_column(column)
    for spec in SPECS.values():
        table.add_row(spec.name, spec.summary, spec.data)
    return table


def _tasks_help(value: str) -> str:
    """``--tasks help``: the task table, then exit 0 (eager, so --model and --lengths are not needed)."""
    if value.strip().lower() == "help":
        from rich.console import Console

        Console().print(ruler_task_table())
        raise typer.Exit(0)
    return value


def eval_ruler(
    model: ModelOption = None,
    lengths: Annotated[str | None, typer.Option(help="Comma-separated prompt lengths, e.g. 4k,8k,16k,32k.")] = None,
    max_len: MaxLenOption = None,
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma-separated RULER tasks (niah_single_1 … fwe, qa_1, qa_2), all, or help (list them).",
            is_eager=True,
            callback=_tasks_help,
        ),
    ] = "all",
    factors: FactorsOption = None,
    method: MethodOption = None,
    target_length: TargetOption = None,
    param: ParamOption = None,
    samples: SamplesOption = 20,
    seed: Annotated[int, typer.Option(help="Seed of the samples: the same seed gives the same prompts.")] = 0,
    haystack_corpus: HaystackCorpusOption = None,
    qa_data: QaDataOption = None,
    batch_size: BatchSizeOption = 1,
    max_new_tokens: MaxNewTokensOption = None,
    chat_template: ChatTemplateOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write results after every task and length; rerunning resumes.")
    ] = None,
) -> None:
    """RULER scores per task and length, and their average (greedy decoding)."""
    evaluate_one(
        "ruler",
        Scaled(model, factors, method, target_length, param, device, dtype),
        lengths,
        max_len,
        json_out,
        ruler_tasks=tasks,
        samples=samples,
        seed=seed,
        haystack_corpus=haystack_corpus,
        qa_data=qa_data,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        chat_template=chat_template,
    )
