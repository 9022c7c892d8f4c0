"""``ropext ls``: the registered methods, searchers, objectives and tasks, RULER's tasks and the built-in models."""

from __future__ import annotations

from typing import Any


def list_registered() -> None:
    """List the registered methods, searchers, objectives and tasks, and the built-in model aliases."""
    from rich.console import Console
    from rich.table import Table

    from ropext.commands.ruler_command import ruler_task_table
    from ropext.evaluate import TASKS
    from ropext.methods import METHODS
    from ropext.registry import load_plugins
    from ropext.search import SEARCHERS
    from ropext.search.objectives import OBJECTIVES

    load_plugins()
    table = Table(show_header=True, header_style="bold")
    for column in ("kind", "name", "aliases", "what it does"):
        table.add_column(column)
    for kind, registry in (("method", METHODS), ("searcher", SEARCHERS), ("objective", OBJECTIVES), ("task", TASKS)):
        entries = list(registry)
        if not entries:
            table.add_row(kind, "-", "", "(none registered)")
        for entry in entries:
            table.add_row(kind, entry.name, ", ".join(entry.aliases), entry.summary)
    Console().print(table)
    Console().print(ruler_task_table())
    Console().print(model_alias_table())


def model_alias_table() -> Any:
    """The built-in ``--model`` aliases: what each is, the wheels it comes from, and whether it is cached."""
    from rich.table import Table

    from ropext.model.aliases import ALIASES, cached_path

    table = Table(title="Built-in models (--model …)", show_header=True, header_style="bold")
    for column in ("alias", "model", "from PyPI (fetched once)", "cached"):
        table.add_column(column)
    for name, model in ALIASES.items():
        cached = "yes" if cached_path(name).is_file() else "no"
        table.add_row(name, model.summary, " ".join(model.requirements), cached)
    return table
