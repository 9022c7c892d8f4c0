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

from ropext.commands.options import (
    DeviceOption,
    DtypeOption,
    FactorsOption,
    MaxLenOption,
    MethodOption,
    ModelOption,
    ParamOption,
    TargetOption,
    passkey_options,
    ruler_options,
)
from ropext.errors import RopextError

RUNNABLE = ("ppl", "passkey", "ruler")


def eval_run(
    model: ModelOption,
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks, run in this order: ppl, passkey, ruler.")],
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
    corpus: Annotated[
        str | None, typer.Option(help="ppl: files/folder (.txt .jsonl[.gz] .parquet), hub dataset, or python-stdlib.")
    ] = None,
    max_docs: Annotated[int, typer.Option(min=1, help="ppl: at most this many documents.")] = 10,
    skip_docs: Annotated[int, typer.Option(min=0, help="ppl: skip this many long-enough documents first.")] = 0,
    mode: Annotated[str, typer.Option(help="ppl: truncate (first L tokens per document) or sliding.")] = "truncate",
    stride: Annotated[
        str | None, typer.Option(help="ppl, sliding mode: tokens between windows, e.g. 4k (default L/2).")
    ] = None,
    chunk_tokens: Annotated[int, typer.Option(min=1, help="ppl: positions per chunk of the loss.")] = 4096,
    depths: Annotated[str, typer.Option(help="passkey: comma-separated depths in [0, 1].")] = "0,0.25,0.5,0.75,1",
    trials: Annotated[int, typer.Option(min=1, help="passkey: prompts per length and depth.")] = 5,
    seed: Annotated[int, typer.Option(help="passkey and ruler: seed of the keys and samples.")] = 0,
    ruler_tasks: Annotated[
        str, typer.Option(help="ruler: comma-separated RULER tasks (niah_single_1 … fwe, qa_1, qa_2) or all.")
    ] = "all",
    samples: Annotated[int, typer.Option(min=1, help="ruler: prompts per task and length.")] = 20,
    haystack_corpus: Annotated[
        str | None,
        typer.Option(
            help="ruler: essay text for the essay-haystack NIAH tasks, as --corpus, or noise (default: shipped prose)."
        ),
    ] = None,
    qa_data: Annotated[
        list[Path] | None, typer.Option(help="ruler: SQuAD-style and/or HotpotQA-style JSON (repeatable).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="ruler: prompts generated together (all of one length, so none is padded).")
    ] = 1,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="ruler: tokens generated per answer (default: RULER's per task).")
    ] = None,
    chat_template: Annotated[
        bool | None,
        typer.Option(
            "--chat-template/--no-chat-template",
            help="ruler: wrap prompts in the tokenizer's chat template (default: when it has one).",
        ),
    ] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = "auto",
    json_dir: Annotated[
        Path | None, typer.Option(help="Write DIR/<task>.json after every length; rerunning resumes.")
    ] = None,
) -> None:
    """Several tasks with one model load: ppl, passkey and/or ruler, each with its own result file."""
    from ropext.cli import _choose, _length_option, _lengths, _open_results, _prepare, _print_table, _run_task
    from ropext.commands.ruler_command import _score_table
    from ropext.evaluate.ruler.run import refuse_other_prompts, resolve_chat_template
    from ropext.lengths import parse_lengths
    from ropext.paths import check_output_file, check_output_folder

    names = _task_names(tasks)
    check_output_folder(json_dir, "--json-dir")
    for name in names if json_dir is not None else ():
        check_output_file(json_dir / f"{name}.json", "--json-dir")
    if "ruler" in names:  # a result file of other RULER prompts is refused before anything loads
        refuse_other_prompts(json_dir / "ruler.json" if json_dir is not None else None)
    own = {"ppl": ppl_lengths, "passkey": passkey_lengths, "ruler": ruler_lengths}
    chosen = _choose(model, factors, method, target_length, param)
    # --lengths or --max-len serve every task without lengths of its own (and may not both be given).
    shared = None
    if lengths is not None or max_len is not None or any(own[name] is None for name in names):
        shared = _lengths(lengths, max_len, chosen)
    task_lengths = {
        name: tuple(parse_lengths(own[name], f"--{name}-lengths")) if own[name] is not None else shared
        for name in names
    }
    # Every option is checked before the model is loaded.
    options: dict[str, Any] = {}
    if "ppl" in names:
        options["ppl"] = _ppl_options(corpus, task_lengths["ppl"], max_docs, skip_docs, mode, stride, chunk_tokens)
    if "passkey" in names:
        options["passkey"] = passkey_options(task_lengths["passkey"], depths, trials, seed)
    if "ruler" in names:
        options["ruler"] = ruler_options(
            task_lengths["ruler"],
            ruler_tasks,
            samples,
            seed,
            haystack_corpus,
            qa_data,
            batch_size,
            max_new_tokens,
            chat_template,
        )
    # Each task's lengths, under the option that gave them, for the memory check.
    lengths_given: dict[str, tuple[int, ...]] = {}
    for name in names:
        option = f"--{name}-lengths" if own[name] is not None else _length_option(max_len)
        lengths_given[option] = tuple(sorted({*lengths_given.get(option, ()), *task_lengths[name]}))
    prepared = _prepare(model, factors, method, target_length, param, device, dtype, lengths_given, chosen)
    if "ruler" in options:  # chat template or not: decided by the tokenizer, stored as chosen
        options["ruler"] = resolve_chat_template(options["ruler"], prepared.tokenizer)
    json_paths = {name: json_dir / f"{name}.json" if json_dir is not None else None for name in names}
    with ExitStack() as opened:
        # Every result file is locked and checked before the first task starts, not when its turn comes.
        stores = {
            name: opened.enter_context(_open_results(name, prepared, options[name], json_paths[name])) for name in names
        }
        for name in names:
            json_path = json_paths[name]
            document = _run_task(name, prepared, options[name], json_path, stores[name])
            if name == "ppl":
                _print_table(document, ("ppl", "tokens", "docs", "seconds_per_window", "peak_memory_gb"))
            elif name == "passkey":
                _print_table(document, ("accuracy", "depths"))
            else:
                _print_table(*_score_table(document))
            if json_path is not None:
                typer.echo(f"wrote {json_path}")


def _task_names(text: str) -> list[str]:
    """Canonical task names in the order given, each once; unknown names fail with a suggestion."""
    from ropext.evaluate import TASKS
    from ropext.registry import load_plugins

    load_plugins()
    names = list(dict.fromkeys(TASKS.canonical(part) for part in text.split(",") if part.strip()))
    if not names:
        raise RopextError("--tasks is empty: write e.g. --tasks ppl,passkey,ruler")
    for name in names:
        if name not in RUNNABLE:
            raise RopextError(f"`eval run` runs {', '.join(RUNNABLE)}; run task {name!r} with its own command")
    return names


def _ppl_options(
    corpus: str | None,
    lengths: tuple[int, ...],
    max_docs: int,
    skip_docs: int,
    mode: str,
    stride: str | None,
    chunk_tokens: int,
):  # -> PerplexityOptions
    from ropext.data.corpus import open_corpus
    from ropext.evaluate.ppl import PerplexityOptions
    from ropext.lengths import parse_length

    if corpus is None:
        raise RopextError("task ppl needs --corpus (the long documents to score)")
    if mode not in ("truncate", "sliding"):
        raise RopextError(f"unknown --mode {mode!r}; use truncate or sliding")
    open_corpus(corpus)  # a missing corpus fails before the model is loaded
    return PerplexityOptions(
        corpus=corpus,
        lengths=lengths,
        max_docs=max_docs,
        skip_docs=skip_docs,
        mode=mode,
        stride=parse_length(stride, "--stride") if stride is not None else None,
        chunk_tokens=chunk_tokens,
    )
