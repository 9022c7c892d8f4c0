"""Several scalings of one model, evaluated with one load: the demo and the method benchmark.

Each (scaling, task) writes the same result file as ``ropext eval`` would, so a comparison that is
interrupted resumes where it stopped and its files feed any later report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ropext.evaluate.passkey import PasskeyOptions, evaluate_passkey
from ropext.evaluate.ppl import PerplexityOptions, evaluate_perplexity
from ropext.evaluate.progress import DisplayTracker, QuietTracker
from ropext.lengths import format_length
from ropext.methods import METHODS
from ropext.model.apply import apply_scaling
from ropext.model.layout import RotaryLayout
from ropext.model.loading import load_layout
from ropext.model.prepared import PreparedModel, prepare_model
from ropext.progress import ProgressDisplay
from ropext.results import ResultFile, result_header
from ropext.scaling import RopeScaling


def compare_methods(
    model: str,
    methods: Sequence[str],
    target_length: int,
    ppl: PerplexityOptions | None,
    passkey: PasskeyOptions | None,
    out_dir: Path,
    device: str | None = None,
    dtype: str | None = None,
    show_progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{method: {"ppl": results, "passkey": results}}``; result files land in ``out_dir``.

    A method may carry parameters: ``"dprope:t=0.001"`` or ``"yarn:beta_fast=16,beta_slow=2"``.
    """
    source, layout = load_layout(model)
    scalings = {spec: scaling_for_spec(spec, layout, target_length) for spec in methods}
    prepared = prepare_model(model, None, device=device, dtype=dtype, layout=(source, layout))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, Any]] = {}
    for spec, scaling in scalings.items():
        apply_scaling(prepared.model, scaling, source=f"{spec} scaling")
        prepared.scaling = scaling
        name = spec_label(spec)
        summary[name] = {}
        for task, options, run in (("ppl", ppl, evaluate_perplexity), ("passkey", passkey, evaluate_passkey)):
            if options is None:
                continue
            file_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)  # "dprope:t=0.001" -> "dprope_t_0.001"
            store = ResultFile(
                out_dir / f"{task}-{file_name}-{format_length(target_length)}.json",
                result_header(task, prepared, options),
            )
            summary[name][task] = _run(run, prepared, options, store, show_progress)
    return summary


def spec_label(spec: str) -> str:
    """How a method spec is named in tables: a YAML file by its stem, a method as written."""
    return Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec


def scaling_for_spec(spec: str, layout: RotaryLayout, target_length: int) -> RopeScaling:
    """``name``, ``name:k=v,k=v`` (a method at ``target_length``) or a scaling YAML file (``*.yaml``)."""
    if spec.endswith((".yaml", ".yml")):
        scaling = RopeScaling.load(spec)
        scaling.check_matches(layout, source=spec)
        return scaling
    name, _, params = spec.partition(":")
    method = METHODS.get(name)
    return method.run(layout, target_length, method.parse_params([p for p in params.split(",") if p]))


def _run(run, prepared: PreparedModel, options: Any, store: ResultFile, show_progress: bool) -> dict[str, Any]:
    with store:
        if not show_progress:
            results = run(prepared, options, QuietTracker(store.record), done=store.done())
        else:
            with ProgressDisplay("compare", unit="item") as shown:
                results = run(prepared, options, DisplayTracker(shown, store.record), done=store.done())
        store.results = {**store.results, **results}  # a rerun with fewer lengths keeps the others
        store.write()
    return results


def markdown_table(summary: dict[str, dict[str, Any]], task: str, metric: str) -> str:
    """Methods as rows, lengths as columns."""
    rows = {name: tasks[task] for name, tasks in summary.items() if task in tasks}
    if not rows:
        return ""
    lengths = list(next(iter(rows.values())))
    header = "| method | " + " | ".join(format_length(int(k)) for k in lengths) + " |"
    lines = [header, "|---|" + "---:|" * len(lengths)]
    for name, results in rows.items():
        cells = [_format(results[k][metric]) for k in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"
