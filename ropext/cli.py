"""The ``ropext`` command line. Heavy imports (torch, transformers) happen inside commands, so
``ropext --help`` and ``ropext ls`` start instantly."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from ropext import __version__
from ropext.commands.eval_run_command import eval_run
from ropext.commands.export_command import export
from ropext.commands.finetune_command import LauncherRankOption
from ropext.commands.finetune_command import register as register_finetune
from ropext.commands.inspect_command import inspect
from ropext.commands.ls_command import list_registered
from ropext.commands.passkey_command import eval_passkey
from ropext.commands.ppl_command import eval_ppl
from ropext.commands.report_command import report
from ropext.commands.ruler_command import eval_ruler
from ropext.commands.search_command import search
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


# Every command lives in its own module of ropext/commands/; this file only assembles them.
app.command("ls")(list_registered)
app.command()(search)
eval_app.command("ppl")(eval_ppl)
eval_app.command("passkey")(eval_passkey)
app.command()(inspect)
app.command()(export)
register_finetune(app)
eval_app.command("ruler")(eval_ruler)
app.command()(report)
eval_app.command("run")(eval_run)


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
            exceptions = importlib.import_module(module)
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
