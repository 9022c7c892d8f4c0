"""The ``ropext`` command line. Heavy imports (torch, transformers) happen inside commands, so
``ropext --help`` and ``ropext ls`` start instantly."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ropext import __version__
from ropext.commands.finetune_command import LauncherRankOption
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
    passkey_options,
)
from ropext.errors import Interrupted, RopextError

app = typer.Typer(
    name="ropext",
    help="Extend the context window of RoPE language models: search factors, evaluate, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: rich's option table tags every flag <bool>, as if it took a value.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},  # Click's default of 80 cuts command summaries short
)
eval_app = typer.Typer(
    help="Evaluate a model (optionally rescaled) on long inputs.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(eval_app, name="eval")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"ropext {installed_version()}")
        raise typer.Exit()


def installed_version() -> str:
    """The installed distribution's version; ``ropext.__version__`` when run from a source tree not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ropext")
    except PackageNotFoundError:
        return __version__


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version, help="Print ropext's version and exit."),
    ] = False,
    local_rank: LauncherRankOption = None,
) -> None:
    # --local_rank is what DeepSpeed's launcher puts before the command (ropext/commands/finetune_command.py).
    return None


def _console():
    from rich.console import Console

    return Console(stderr=True)


@app.command("ls")
def list_registered() -> None:
    """List the registered methods, searchers and tasks."""
    from rich.console import Console
    from rich.table import Table

    from ropext.commands.ruler_command import ruler_task_table
    from ropext.evaluate import TASKS
    from ropext.methods import METHODS
    from ropext.registry import load_plugins
    from ropext.search import SEARCHERS

    load_plugins()
    table = Table(show_header=True, header_style="bold")
    for column in ("kind", "name", "aliases", "what it does"):
        table.add_column(column)
    for kind, registry in (("method", METHODS), ("searcher", SEARCHERS), ("task", TASKS)):
        entries = list(registry)
        if not entries:
            table.add_row(kind, "-", "", "(none registered)")
        for entry in entries:
            table.add_row(kind, entry.name, ", ".join(entry.aliases), entry.summary)
    Console().print(table)
    Console().print(ruler_task_table())


@app.command()
def search(
    model: ModelOption,
    method: Annotated[str, typer.Option("--method", help="A method or searcher (see `ropext ls`).")],
    target_length: Annotated[str, typer.Option("--target-length", "-t", help="Target context: 32768, 32k, 1m.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the scaling YAML.")],
    param: ParamOption = None,
    corpus: Annotated[str | None, typer.Option(help="Searchers: text whose perplexity guides the search.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Searchers: documents (one window each) per evaluation.")] = 5,
    skip_docs: Annotated[int, typer.Option(min=0, help="Searchers: skip this many long-enough documents first.")] = 0,
    budget: Annotated[int | None, typer.Option(min=1, help="Searchers: stop after this many evaluations.")] = None,
    seed: Annotated[int, typer.Option(help="Searchers: random seed.")] = 0,
    devices: Annotated[str | None, typer.Option(help="Searchers: e.g. cuda:0,cuda:1 (default: every GPU).")] = None,
    start_from: Annotated[
        Path | None, typer.Option("--from", help="Searchers: start from these factors (progressive extension).")
    ] = None,
    short_length: Annotated[
        str | None, typer.Option(help="Searchers: search short_factors of --from for inputs up to this length.")
    ] = None,
    journal: Annotated[Path | None, typer.Option(help="Searchers: journal file (default OUT.journal.jsonl).")] = None,
    attention_factor: Annotated[
        str | None, typer.Option(help="Searchers: yarn, longrope, none or a number (default per searcher).")
    ] = None,
    max_batch_tokens: Annotated[int, typer.Option(min=1, help="Searchers: tokens per forward pass.")] = 131072,
    sdpa_backend: Annotated[
        str, typer.Option(help="Searchers: auto, cudnn, flash, efficient, math, default.")
    ] = "auto",
    critical_floor: Annotated[
        bool,
        typer.Option(
            help="Searchers: keep pairs that never turn within the original context at factor ≥ s, so no "
            "position up to the target has untrained angles (--no-critical-floor: the papers' bounds only)."
        ),
    ] = True,
    dtype: DtypeOption = "auto",
) -> None:
    """Produce per-pair RoPE scaling factors as YAML: closed-form at once, or searched by perplexity."""
    from ropext.lengths import parse_length
    from ropext.methods import METHODS
    from ropext.model.sdpa import SDPA_BACKENDS
    from ropext.paths import check_output_file

    check_output_file(out, "--out")
    if start_from is not None and start_from.resolve() == out.resolve():
        raise RopextError(
            f"--out {out} is the --from file: the search would overwrite its own starting factors; "
            "write to another file, e.g. --out " + str(out.with_name(out.stem + "-extended" + out.suffix))
        )
    if sdpa_backend not in SDPA_BACKENDS:
        raise RopextError(f"unknown --sdpa-backend {sdpa_backend!r}; use one of {', '.join(SDPA_BACKENDS)}")
    from ropext.model.loading import load_layout
    from ropext.registry import load_plugins
    from ropext.scaling import check_scaling_file
    from ropext.search import SEARCHERS

    load_plugins()
    length = parse_length(target_length, "--target-length")
    if method in SEARCHERS:
        from ropext.search.engine import EngineOptions
        from ropext.search.run import SearchRequest

        if corpus is None:
            raise RopextError(f"searcher {method} needs --corpus (the text whose perplexity guides it)")
        from ropext.model.device import check_device

        chosen_devices = tuple(check_device(d, "--devices") for d in (devices or "").split(",") if d.strip())
        if start_from is not None:
            check_scaling_file(start_from, "--from file")
        journal = journal or out.with_name(out.name + ".journal.jsonl")
        check_output_file(journal, "--journal")
        request = SearchRequest(
            model=model,
            searcher=method,
            params=tuple(param or ()),
            corpus=corpus,
            target_length=length,
            samples=samples,
            skip_docs=skip_docs,
            budget=budget,
            seed=seed,
            devices=chosen_devices,
            start_from=start_from,
            short_length=parse_length(short_length, "--short-length") if short_length else None,
            attention=attention_factor,
            dtype=dtype,
            critical_floor=critical_floor,
            engine=EngineOptions(max_batch_tokens=max_batch_tokens, sdpa_backend=sdpa_backend),
        )
        _run_searcher(request, out, journal)
        return
    chosen = METHODS.get(method)  # unknown names fail before the model is touched
    params = chosen.parse_params(param or [])
    began = time.perf_counter()
    _, layout = load_layout(model)
    scaling = chosen.run(layout, length, params).with_provenance(
        model=model, ropext_version=__version__, seconds=round(time.perf_counter() - began, 3)
    )
    scaling.save(out)
    low, high = min(scaling.factors), max(scaling.factors)
    typer.echo(
        f"wrote {out}: {scaling.method} for {layout.name}, {layout.original_max_position_embeddings} -> "
        f"{length} tokens, {len(scaling.factors)} factors in [{low:.4g}, {high:.4g}], "
        f"attention factor {scaling.attention_factor:.4g}"
    )


def _run_searcher(request, out: Path, journal: Path) -> None:
    from ropext.commands.rerun import command_line
    from ropext.distributed import environment_world
    from ropext.model.loading import load_layout
    from ropext.progress import ProgressDisplay
    from ropext.search.journal import saved_evaluations
    from ropext.search.run import run_search

    source, layout = load_layout(request.model)
    _check_search_fits(request, source)
    if not environment_world().is_main:
        # Another process of a torchrun launch: it scores its share; rank 0 reports and writes the file.
        run_search(request, source, layout, journal, None)
        return
    with ProgressDisplay(f"{request.searcher} search", unit="evaluation", console=_console()) as shown:

        def on_progress(done: int, expected: int, best: float) -> None:
            best_text = f"{best:.4f}" if best != float("inf") else "-"
            shown.update(done, total=max(expected, done), detail=f"best ppl {best_text}")

        try:
            scaling = run_search(request, source, layout, journal, on_progress)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; {saved_evaluations(journal)} evaluations are saved in {journal}; to continue, "
                f"rerun the same command: {command_line()}"
            ) from None
    scaling.save(out)
    prov = scaling.provenance
    typer.echo(
        f"wrote {out}: {request.searcher} for {request.model}, best perplexity {prov['score']:.4f} after "
        f"{prov['evaluations']} evaluations ({prov['replayed_evaluations']} replayed from {journal}), "
        f"{prov['seconds']:.0f} s" + (" (stopped at --budget)" if prov["stopped_by_budget"] else "")
    )


def _check_search_fits(request, source) -> None:
    """A target length whose windows cannot fit on the search's device fails before the model loads."""
    from ropext.model.loading import default_device, load_config, resolve_dtype
    from ropext.model.memory import check_lengths_fit

    device = request.devices[0] if request.devices else default_device()
    lengths = [request.target_length, *([request.short_length] if request.short_length else [])]
    check_lengths_fit(lengths, load_config(source), device, resolve_dtype(request.dtype, device), "--target-length")


def _choose(
    model: str, factors: Path | None, method: str | None, target_length: str | None, param: list[str] | None
) -> tuple[Any, Any]:
    """The model's source and rotary layout (its config only, no weights) and the scaling to apply (or None)."""
    from ropext.lengths import parse_length
    from ropext.model.loading import load_layout
    from ropext.model.prepared import choose_scaling
    from ropext.registry import load_plugins
    from ropext.scaling import check_scaling_file

    load_plugins()
    if factors is not None:
        check_scaling_file(factors)  # before the model's config is read
    layout = load_layout(model)
    target = parse_length(target_length, "--target-length") if target_length is not None else None
    return layout, choose_scaling(layout[1], factors, method, target, param)


def _length_option(max_len: str | None) -> str:
    """The option that gave the lengths: --max-len when used, else --lengths."""
    return "--lengths" if max_len is None else "--max-len"


def _lengths(lengths: str | None, max_len: str | None, chosen: tuple[Any, Any]) -> tuple[int, ...]:
    """``--lengths`` or ``--max-len`` read against the chosen model and scaling; --max-len's lengths are printed."""
    from ropext.lengths import format_length, requested_lengths

    (_, layout), scaling = chosen
    # The context the scaling extends (checked equal to the model's when a factors file is loaded).
    original = (scaling or layout).original_max_position_embeddings
    values = tuple(requested_lengths(lengths, max_len, original))
    if max_len is not None:
        shown = ", ".join(format_length(v) for v in values)
        why = (
            f"the original context {format_length(original)} doubling up to --max-len {max_len}"
            if len(values) > 1
            else f"--max-len {max_len} is not above the original context {format_length(original)}"
        )
        _console().print(f"lengths {shown}: {why}", highlight=False)
    return values


def _prepare(
    model: str,
    factors: Path | None,
    method: str | None,
    target_length: str | None,
    param: list[str] | None,
    device: str | None,
    dtype: str,
    lengths: dict[str, tuple[int, ...]] | None = None,
    chosen: tuple[Any, Any] | None = None,
):
    """The model ready to evaluate; every check that needs no weights (device, scaling, whether ``lengths``
    can fit in memory) runs before they load. ``lengths`` maps each length option to the lengths it gave
    (a length too long is reported under its option); ``chosen`` is what `_choose` returned, when known."""
    from ropext.model.prepared import prepare_model

    if device is not None:
        from ropext.model.device import check_device

        device = check_device(device)
    layout, scaling = chosen or _choose(model, factors, method, target_length, param)
    if lengths:
        from ropext.model.loading import default_device, load_config, resolve_dtype
        from ropext.model.memory import check_lengths_fit

        where = device or default_device()
        config = load_config(layout[0])
        for option, values in lengths.items():
            check_lengths_fit(values, config, where, resolve_dtype(dtype, where), option)
    with _console().status(f"loading {model}"):
        prepared = prepare_model(model, scaling, device=device, dtype=dtype, layout=layout)
    return prepared


def _header(task: str, prepared, options: Any) -> dict[str, Any]:
    from ropext.results import result_header

    return result_header(task, prepared, options)


def _open_results(task: str, prepared, options: Any, json_path: Path | None):  # -> ResultFile
    """The task's result file, locked for this run and checked against what it already holds."""
    from ropext.results import ResultFile

    return ResultFile(json_path, _header(task, prepared, options))


def _run_task(task: str, prepared, options: Any, json_path: Path | None, store=None) -> dict[str, Any]:
    """Run one task, writing each finished length to ``json_path``; ``store``: that file, already opened."""
    from ropext.commands.rerun import command_line
    from ropext.evaluate import TASKS
    from ropext.evaluate.progress import DisplayTracker
    from ropext.progress import ProgressDisplay

    store = store if store is not None else _open_results(task, prepared, options, json_path)
    unit = "window" if task == "ppl" else "prompt"
    with store, ProgressDisplay(task, unit=unit, console=_console()) as shown:
        try:
            results = TASKS.get(task)(
                prepared, options, DisplayTracker(shown, on_result=store.record), done=store.done()
            )
        except KeyboardInterrupt:
            if json_path is None:
                raise Interrupted(
                    "interrupted; nothing was saved (no --json); to keep finished lengths and resume, run: "
                    f"{command_line()} --json FILE"
                ) from None
            raise Interrupted(
                f"interrupted; {len(store.results)} finished results are saved in {json_path}; to continue, "
                f"rerun: {command_line()}"
            ) from None
        store.results = {**store.results, **results}  # a rerun with fewer lengths keeps the others
        store.write()
        return store.document()


@eval_app.command("ppl")
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
    from ropext.evaluate.ppl import PerplexityOptions
    from ropext.lengths import parse_length
    from ropext.paths import check_output_file

    check_output_file(json_out, "--json")
    if mode not in ("truncate", "sliding"):
        raise RopextError(f"unknown --mode {mode!r}; use truncate or sliding")
    chosen = _choose(model, factors, method, target_length, param)
    options = PerplexityOptions(
        corpus=corpus,
        lengths=_lengths(lengths, max_len, chosen),
        max_docs=max_docs,
        skip_docs=skip_docs,
        mode=mode,
        stride=parse_length(stride, "--stride") if stride is not None else None,
        chunk_tokens=chunk_tokens,
    )
    lengths_given = {_length_option(max_len): options.lengths}
    prepared = _prepare(model, factors, method, target_length, param, device, dtype, lengths_given, chosen)
    document = _run_task("ppl", prepared, options, json_out)
    _print_table(document, ("ppl", "tokens", "docs", "seconds_per_window", "peak_memory_gb"))


@eval_app.command("passkey")
def eval_passkey(
    model: ModelOption,
    lengths: Annotated[str | None, typer.Option(help="Comma-separated prompt lengths, e.g. 8k,16k,32k.")] = None,
    max_len: MaxLenOption = None,
    factors: FactorsOption = None,
    method: MethodOption = None,
    target_length: TargetOption = None,
    param: ParamOption = None,
    depths: Annotated[str, typer.Option(help="Comma-separated depths in [0, 1].")] = "0,0.25,0.5,0.75,1",
    trials: Annotated[int, typer.Option(min=1, help="Prompts per length and depth.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the keys.")] = 0,
    device: DeviceOption = None,
    dtype: DtypeOption = "auto",
    json_out: JsonOption = None,
) -> None:
    """Pass-key retrieval accuracy per length and depth (greedy decoding)."""
    from ropext.paths import check_output_file

    check_output_file(json_out, "--json")
    chosen = _choose(model, factors, method, target_length, param)
    options = passkey_options(_lengths(lengths, max_len, chosen), depths, trials, seed)
    lengths_given = {_length_option(max_len): options.lengths}
    prepared = _prepare(model, factors, method, target_length, param, device, dtype, lengths_given, chosen)
    document = _run_task("passkey", prepared, options, json_out)
    _print_table(document, ("accuracy", "depths"))


def _print_table(document: dict[str, Any], columns: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ropext.lengths import format_length

    scaling = document["scaling"]
    title = f"{document['task']} — {document['model']} — {scaling['method'] if scaling else 'original'}"
    table = Table(title=title)
    table.add_column("length", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for key, result in document["results"].items():
        cells = []
        for column in columns:
            value = result.get(column)
            if isinstance(value, dict):
                cells.append(" ".join(f"{k}:{v:.2f}" for k, v in value.items()))
            elif isinstance(value, float):
                cells.append(f"{value:.4g}")
            else:
                cells.append("-" if value is None else str(value))
        table.add_row(format_length(int(key)), *cells)
    Console().print(table)


@app.command()
def inspect(
    factors: Annotated[Path, typer.Argument(help="Scaling YAML.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also draw factors and wavelengths to this PNG.")] = None,
    intervals: Annotated[int, typer.Option(min=1, help="Histogram bins for the disturbance.")] = 360,
) -> None:
    """Per-pair factors, wavelengths and regimes, and the rotary-angle disturbance of a scaling."""
    from ropext.inspection import describe, render_plot, render_table
    from ropext.paths import check_output_file
    from ropext.scaling import RopeScaling

    check_output_file(plot, "--plot")
    scaling = RopeScaling.load(factors)
    report = describe(scaling, intervals=intervals)
    if plot is not None:
        render_plot(scaling, report, plot)
    if json_output:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_table(scaling, report)


# Commands that live in their own modules (ropext/commands/), registered here.
# <registered commands: one line each>
app.command()(__import__("ropext.commands.export_command", fromlist=["export"]).export)
__import__("ropext.commands.finetune_command", fromlist=["register"]).register(app)
eval_app.command("ruler")(__import__("ropext.commands.ruler_command", fromlist=["eval_ruler"]).eval_ruler)
app.command()(__import__("ropext.commands.report_command", fromlist=["report"]).report)
eval_app.command("run")(__import__("ropext.commands.eval_run_command", fromlist=["eval_run"]).eval_run)
# </registered commands>


def _command_line_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Usage-error and abort classes of the command-line layer: recent Typer raises its own vendored copies
    of click's, older Typer plain click's; whichever exist are caught."""
    usage: list[type] = []
    aborts: list[type] = []
    for module, usage_name, abort_name in (
        ("typer._click.exceptions", "ClickException", None),
        ("typer.exceptions", None, "Abort"),
        ("click.exceptions", "ClickException", "Abort"),
    ):
        try:
            exceptions = __import__(module, fromlist=["_"])
        except ImportError:
            continue
        for name, found in ((usage_name, usage), (abort_name, aborts)):
            if name and hasattr(exceptions, name):
                found.append(getattr(exceptions, name))
    return tuple(usage), tuple(aborts)


def main() -> None:
    """Console entry point: one-line errors for bad input, no tracebacks, status 2."""
    usage_errors, aborts = _command_line_errors()
    try:
        status = app(standalone_mode=False)
    except Interrupted as err:
        _fail(str(err), status=130)
    except RopextError as err:
        _fail(str(err))
    except (KeyboardInterrupt, *aborts):
        _interrupted()
    except usage_errors as err:
        # `ropext` or `ropext eval` alone: the help is the answer, nothing went wrong. (Matched by name, as
        # Typer does, since the class lives in Typer's vendored Click.)
        if type(err).__name__ == "NoArgsIsHelpError":
            typer.echo(err.format_message())
            sys.exit(0)
        if not err.format_message():
            sys.exit(0)
        context = getattr(err, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail(f"{err.format_message()}{hint}", status=getattr(err, "exit_code", 2) or 2)
    except Exception as err:
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            _fail("out of GPU memory: evaluate shorter lengths, pass --chunk-tokens 1024, or use a larger GPU")
        raise
    # Typer turns Ctrl-C into a returned status 130 when it runs with standalone_mode=False.
    if status == 130:
        _interrupted()
    if isinstance(status, int) and status != 0:
        sys.exit(status)


def _interrupted() -> None:
    """Ctrl-C outside the commands' own handling (loading a model, say): nothing of this run was lost."""
    from ropext.commands.rerun import command_line

    _fail(f"interrupted; to continue, rerun the same command: {command_line()}", status=130)


def _fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
