"""``ropext report``: a Markdown page with tables and plots from ``ropext eval`` result files (docs/report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md and its PNG plots.")],
    results: Annotated[
        list[Path] | None,
        typer.Argument(help="Result files written by `ropext eval ... --json` (shell globs welcome)."),
    ] = None,
    title: Annotated[str, typer.Option(help="Heading of the page.")] = "ropext report",
) -> None:
    """One Markdown page (DIR/report.md, plots beside it): perplexity, passkey, RULER and the factors compared."""
    from ropext.paths import check_output_folder
    from ropext.report import write_report

    check_output_folder(out, "--out")
    results = results or []  # none given: write_report names the problem in one line
    written = write_report(results, out, title=title)
    skipped = f"; skipped {len(written.skipped)} comparison summaries" if written.skipped else ""
    typer.echo(
        f"wrote {written.markdown}: {len(written.sections)} result sections and {len(written.plots)} plots "
        f"from {len(results) - len(written.skipped)} result files{skipped}"
    )
