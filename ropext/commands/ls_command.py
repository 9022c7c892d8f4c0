"""``ropext ls``: the registered methods, searchers, objectives and tasks, and RULER's tasks."""

from __future__ import annotations


def list_registered() -> None:
    """List the registered methods, searchers, objectives and tasks."""
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
