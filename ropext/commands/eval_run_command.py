"""``ropext eval run``: several tasks (ppl, passkey, ruler) on one loaded model (docs/report.md).

Each task writes the result file its own command would write with ``--json`` (DIR/ppl.json,
DIR/passkey.json, DIR/ruler.json): a rerun resumes, and ``ropext eval ppl --json DIR/ppl.json`` with the
same arguments continues the same file.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from ropext.commands import common
from ropext.commands.common import Scaled
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
    RunBatchSizeOption,
    RunChatTemplateOption,
    RunChunkTokensOption,
    RunCorpusOption,
    RunDepthsOption,
    RunHaystackCorpusOption,
    RunMaxDocsOption,
    RunMaxNewTokensOption,
    RunModeOption,
    RunQaDataOption,
    RunSamplesOption,
    RunSkipDocsOption,
    RunStrideOption,
    RunTrialsOption,
)
from ropext.errors import RopextError


def eval_run(
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks, run in this order: ppl, passkey, ruler.")],
    model: ModelOption = None,
    lengths: Annotated[
        str | None, typer.Option(help="Comma-separated lengths for every task, e.g. 8k,16k,32k.")
    ] = None,
    max_len: MaxLenOption = None,
    factors: FactorsOption = None,
    method: MethodOption = None,
    target_length: TargetOption = None,
    param: ParamOption = None,
    ppl_lengths: Annotated[str | None, typer.Option(help="ppl: lengths instead of --lengths/--max-len.")] = None,
    passkey_lengths: Annotated[
        str | None, typer.Option(help="passkey: lengths instead of --lengths/--max-len.")
    ] = None,
    ruler_lengths: Annotated[str | None, typer.Option(help="ruler: lengths instead of --lengths/--max-len.")] = None,
    corpus: RunCorpusOption = None,
    max_docs: RunMaxDocsOption = 10,
    skip_docs: RunSkipDocsOption = 0,
    mode: RunModeOption = "truncate",
    stride: RunStrideOption = None,
    chunk_tokens: RunChunkTokensOption = 4096,
    depths: RunDepthsOption = "spread",
    trials: RunTrialsOption = 10,
    seed: Annotated[int, typer.Option(help="passkey and ruler: seed of the keys and samples.")] = 0,
    ruler_tasks: Annotated[
        str, typer.Option(help="ruler: comma-separated RULER tasks (niah_single_1 … fwe, qa_1, qa_2) or all.")
    ] = "all",
    samples: RunSamplesOption = 20,
    haystack_corpus: RunHaystackCorpusOption = None,
    qa_data: RunQaDataOption = None,
    batch_size: RunBatchSizeOption = 1,
    max_new_tokens: RunMaxNewTokensOption = None,
    chat_template: RunChatTemplateOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = "auto",
    json_dir: Annotated[
        Path | None, typer.Option(help="Write DIR/<task>.json after every length; rerunning resumes.")
    ] = None,
) -> None:
    """Several tasks with one model load: ppl, passkey and/or ruler, each with its own result file."""
    from ropext.lengths import parse_lengths
    from ropext.paths import check_output_file, check_output_folder

    tasks_run = _tasks(tasks)
    check_output_folder(json_dir, "--json-dir")
    json_paths = {task.name: json_dir / f"{task.name}.json" if json_dir is not None else None for task in tasks_run}
    for path in json_paths.values():
        if path is not None:
            check_output_file(path, "--json-dir")
    for task in tasks_run:  # e.g. a result file of other RULER prompts is refused before anything loads
        task.check_result_file(json_paths[task.name])
    own = {"ppl": ppl_lengths, "passkey": passkey_lengths, "ruler": ruler_lengths}
    scaled = Scaled(model, factors, method, target_length, param, device, dtype).with_model()
    chosen = scaled.choose()
    # --lengths or --max-len serve every task without lengths of its own (and may not both be given).
    shared = None
    if lengths is not None or max_len is not None or any(own.get(task.name) is None for task in tasks_run):
        shared = common.lengths(lengths, max_len, chosen)
    task_lengths = {
        task.name: tuple(parse_lengths(own[task.name], f"--{task.name}-lengths"))
        if own.get(task.name) is not None
        else shared
        for task in tasks_run
    }
    # Every option is checked before the model is loaded.
    if corpus is None and any(task.name == "ppl" for task in tasks_run):
        from ropext.commands.defaults import choose_corpus

        corpus = choose_corpus(corpus)
    values = {
        "corpus": corpus,
        "max_docs": max_docs,
        "skip_docs": skip_docs,
        "mode": mode,
        "stride": stride,
        "chunk_tokens": chunk_tokens,
        "depths": depths,
        "trials": trials,
        "seed": seed,
        "ruler_tasks": ruler_tasks,
        "samples": samples,
        "haystack_corpus": haystack_corpus,
        "qa_data": qa_data,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "chat_template": chat_template,
    }
    options: dict[str, Any] = {task.name: task.options(task_lengths[task.name], **values) for task in tasks_run}
    # Each task's lengths, under the option that gave them, for the memory check.
    lengths_given: dict[str, tuple[int, ...]] = {}
    for task in tasks_run:
        option = f"--{task.name}-lengths" if own.get(task.name) is not None else common.length_option(max_len)
        lengths_given[option] = tuple(sorted({*lengths_given.get(option, ()), *task_lengths[task.name]}))
    prepared = scaled.prepare(lengths_given, chosen)
    for task in tasks_run:  # e.g. chat template or not: decided by the tokenizer, stored as chosen
        options[task.name] = task.settle(options[task.name], prepared.tokenizer)
    with ExitStack() as opened:
        # Every result file is locked and checked before the first task starts, not when its turn comes.
        stores = {
            task.name: opened.enter_context(
                common.open_results(task.name, prepared, options[task.name], json_paths[task.name])
            )
            for task in tasks_run
        }
        for task in tasks_run:
            json_path = json_paths[task.name]
            document = common.run_task(task, prepared, options[task.name], json_path, stores[task.name])
            common.print_results(task, document, prepared.label)
            if json_path is not None:
                typer.echo(f"wrote {json_path}")


def _tasks(text: str) -> list[Any]:  # -> list[Task]
    """The tasks named, in the order given, each once; unknown names fail with a suggestion."""
    from ropext.evaluate import TASKS
    from ropext.evaluate.task import Task
    from ropext.registry import load_plugins

    load_plugins()
    names = list(dict.fromkeys(TASKS.canonical(part) for part in text.split(",") if part.strip()))
    if not names:
        raise RopextError("--tasks is empty: write e.g. --tasks ppl,passkey,ruler")
    for name in names:
        if not isinstance(TASKS.get(name), Task):  # a plugin's bare function has no options to read
            runnable = [entry.name for entry in TASKS if isinstance(TASKS.get(entry.name), Task)]
            raise RopextError(f"`eval run` runs {', '.join(runnable)}; run task {name!r} with its own command")
    return [TASKS.get(name) for name in names]
