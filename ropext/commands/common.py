"""Helpers shared by the commands: the console, preparing a model to evaluate, running a task into its result
file, and printing a result table. Heavy imports (torch, transformers, rich) happen inside the functions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ropext.errors import Interrupted


def console() -> Any:
    """Rich's console on stderr: progress and notes, leaving stdout to results."""
    from rich.console import Console

    return Console(stderr=True)


def choose(
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


def length_option(max_len: str | None) -> str:
    """The option that gave the lengths: --max-len when used, else --lengths."""
    return "--lengths" if max_len is None else "--max-len"


def lengths(given: str | None, max_len: str | None, chosen: tuple[Any, Any]) -> tuple[int, ...]:
    """``--lengths`` or ``--max-len`` read against the chosen model and scaling; --max-len's lengths are printed."""
    from ropext.lengths import format_length, requested_lengths

    (_, layout), scaling = chosen
    # The context the scaling extends (checked equal to the model's when a factors file is loaded).
    original = (scaling or layout).original_max_position_embeddings
    values = tuple(requested_lengths(given, max_len, original))
    if max_len is not None:
        shown = ", ".join(format_length(v) for v in values)
        why = (
            f"the original context {format_length(original)} doubling up to --max-len {max_len}"
            if len(values) > 1
            else f"--max-len {max_len} is not above the original context {format_length(original)}"
        )
        console().print(f"lengths {shown}: {why}", highlight=False)
    return values


def prepare(
    model: str,
    factors: Path | None,
    method: str | None,
    target_length: str | None,
    param: list[str] | None,
    device: str | None,
    dtype: str,
    lengths: dict[str, tuple[int, ...]] | None = None,
    chosen: tuple[Any, Any] | None = None,
) -> Any:  # -> PreparedModel
    """The model ready to evaluate; every check that needs no weights (device, scaling, whether ``lengths``
    can fit in memory) runs before they load. ``lengths`` maps each length option to the lengths it gave
    (a length too long is reported under its option); ``chosen`` is what `choose` returned, when known."""
    from ropext.model.prepared import prepare_model

    if device is not None:
        from ropext.model.device import check_device

        device = check_device(device)
    layout, scaling = chosen or choose(model, factors, method, target_length, param)
    if lengths:
        from ropext.model.loading import default_device, load_config, resolve_dtype
        from ropext.model.memory import check_lengths_fit

        where = device or default_device()
        config = load_config(layout[0])
        for option, values in lengths.items():
            check_lengths_fit(values, config, where, resolve_dtype(dtype, where), option)
    with console().status(f"loading {model}"):
        prepared = prepare_model(model, scaling, device=device, dtype=dtype, layout=layout)
    return prepared


def open_results(task: str, prepared: Any, options: Any, json_path: Path | None) -> Any:  # -> ResultFile
    """The task's result file, locked for this run and checked against what it already holds."""
    from ropext.results import ResultFile, result_header

    return ResultFile(json_path, result_header(task, prepared, options))


def run_task(task: Any, prepared: Any, options: Any, json_path: Path | None, store: Any = None) -> dict[str, Any]:
    """Run one task (a `Task`), writing each finished length to ``json_path``; ``store``: that file, already
    opened. Returns the result document."""
    from ropext.commands.rerun import command_line
    from ropext.evaluate.progress import DisplayTracker
    from ropext.progress import ProgressDisplay

    store = store if store is not None else open_results(task.name, prepared, options, json_path)
    with store, ProgressDisplay(task.name, unit=task.unit, console=console()) as shown:
        try:
            results = task.run(prepared, options, DisplayTracker(shown, on_result=store.record), done=store.done())
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


def print_table(document: dict[str, Any], columns: tuple[str, ...], label: str | None = None) -> None:
    """One row per length of a result document, one column per name in ``columns``, on stdout; ``label``
    names what ran (`PreparedModel.label`: a checkpoint's own rope type is not in the document)."""
    from rich.console import Console
    from rich.table import Table

    from ropext.lengths import format_length

    scaling = document["scaling"]
    ran = label or (scaling["method"] if scaling else "original")
    title = f"{document['task']} — {document['model']} — {ran}"
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


def print_results(task: Any, document: dict[str, Any], label: str | None = None) -> None:
    """The task's table of a result document (the task chooses its rows and columns)."""
    print_table(*task.table(document), label=label)


@dataclass(frozen=True)
class Scaled:
    """The options every evaluating command shares: the model, the scaling to apply, where and how to run."""

    model: str | None
    """None until `with_model` chooses one (--model left out)."""
    factors: Path | None
    method: str | None
    target_length: str | None
    param: list[str] | None
    device: str | None
    dtype: str

    def with_model(self) -> Scaled:
        """These options with the model chosen: --model, else the one --factors records, else the default."""
        from ropext.commands.defaults import choose_model

        return replace(self, model=choose_model(self.model, self.factors))

    def choose(self) -> tuple[Any, Any]:
        assert self.model is not None, "with_model() chooses the model first"
        return choose(self.model, self.factors, self.method, self.target_length, self.param)

    def prepare(self, lengths: dict[str, tuple[int, ...]], chosen: tuple[Any, Any]) -> Any:
        assert self.model is not None, "with_model() chooses the model first"
        return prepare(
            self.model,
            self.factors,
            self.method,
            self.target_length,
            self.param,
            self.device,
            self.dtype,
            lengths,
            chosen,
        )


def evaluate_one(
    name: str, scaled: Scaled, given_lengths: str | None, max_len: str | None, json_out: Path | None, **values: Any
) -> None:
    """``ropext eval NAME``: one task, its options checked before the model loads, its result file written after
    every length, its table printed. ``values``: the task's command-line values (see `Task.options`)."""
    from ropext.evaluate import TASKS
    from ropext.paths import check_output_file

    task = TASKS.get(name)
    # Bad input fails here, before the model is loaded.
    check_output_file(json_out, "--json")
    task.check_result_file(json_out)
    scaled = scaled.with_model()
    chosen = scaled.choose()
    options = task.options(lengths(given_lengths, max_len, chosen), **values)
    prepared = scaled.prepare({length_option(max_len): options.lengths}, chosen)
    options = task.settle(options, prepared.tokenizer)  # stored as chosen
    print_results(task, run_task(task, prepared, options, json_out), prepared.label)
