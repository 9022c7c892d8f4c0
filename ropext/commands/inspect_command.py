"""``ropext inspect``: what a scaling file does, pair by pair (README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


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
