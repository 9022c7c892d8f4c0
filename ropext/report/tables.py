"""The report's Markdown tables: per-length metrics, passkey depths, RULER tasks, scalings and sources."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ropext.lengths import format_length
from ropext.report.labels import label_key, short_value
from ropext.report.sections import Section
from ropext.results import ResultDoc


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right_from: int = 1, left: Sequence[int] = ()) -> str:
    """A Markdown table; columns from ``right_from`` on are right-aligned, except those in ``left``."""
    align = ["---" if i < right_from or i in left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_ppl(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _fmt_score(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _metric_table(
    section: Section, order: list[str], metric: str, fmt: Callable[[float | None], str], best: Callable
) -> str:
    """Methods as rows, lengths as columns; the best value of each column in bold."""
    lengths = section.lengths
    winners = {}
    for length in lengths:
        values = [s.results[length].get(metric) for s in section.series.values() if length in s.results]
        values = [v for v in values if v is not None]
        winners[length] = best(values) if len(values) > 1 else None
    rows = []
    for label in order:
        cells = []
        for length in lengths:
            value = section.series[label].results.get(length, {}).get(metric)
            text = fmt(value) if length in section.series[label].results else "-"
            cells.append(f"**{text}**" if value is not None and value == winners[length] else text)
        rows.append([label, *cells])
    return _table([_series_header(section), *map(format_length, lengths)], rows)


def _series_header(section: Section) -> str:
    """The rows' column: methods, or, with several models, methods and models (``section_labels``)."""
    return "method" if len(section.models) == 1 else "method · model"


def ppl_table(section: Section, order: list[str]) -> str:
    return _metric_table(section, order, "ppl", _fmt_ppl, min)


def passkey_table(section: Section, order: list[str]) -> str:
    return _metric_table(section, order, "accuracy", _fmt_score, max)


def passkey_depths(section: Section) -> list[str]:
    depths = {d for s in section.series.values() for r in s.results.values() for d in r.get("depths", {})}
    return sorted(depths, key=float)


def passkey_depth_table(section: Section, order: list[str]) -> str:
    """One row per (method, length): the accuracy at each depth."""
    depths = passkey_depths(section)
    rows = []
    for label in order:
        for length, result in sorted(section.series[label].results.items()):
            per_depth = result.get("depths", {})
            rows.append([label, format_length(length), *(_fmt_score(per_depth.get(d)) for d in depths)])
    return _table([_series_header(section), "length", *(f"depth {d}" for d in depths)], rows, right_from=1)


def ruler_tasks(section: Section) -> list[str]:
    from ropext.evaluate.ruler.tasks import ALL_TASKS

    present = {t for s in section.series.values() for r in s.results.values() for t in r.get("tasks", {})}
    return [t for t in ALL_TASKS if t in present] + sorted(present - set(ALL_TASKS))


def ruler_table(section: Section, order: list[str]) -> str:
    """One row per (method, length): the average and each task's score."""
    tasks = ruler_tasks(section)
    rows = []
    for label in order:
        for length, result in sorted(section.series[label].results.items()):
            entries = result.get("tasks", {})
            scores = [_fmt_score(entries[t].get("score"), 3) if t in entries else "-" for t in tasks]
            average = _fmt_score(result.get("average"), 3)
            scored, total = scored_tasks(result), scored_task_count(section)
            if result.get("average") is not None and scored < total:
                average += f" ({scored} of {total})"  # an unfinished length: its average is over fewer tasks
            rows.append([label, format_length(length), average, *scores])
    return _table([_series_header(section), "length", "average", *tasks], rows)


def scalings_table(scalings: dict[str, dict[str, Any]], order: list[str], targets: dict[str, list[int]]) -> str:
    """One row per scaling; ``targets``: every target length a label's scaling was computed for (``none``
    at 32k and at 64k is one scaling)."""
    rows = []
    for label in order:
        s = scalings[label]
        factors, l0 = s["factors"], s["original_max_position_embeddings"]
        rows.append(
            [
                label,
                s["method"],
                f"{format_length(l0)} → " + " / ".join(format_length(t) for t in targets[label]),
                " / ".join(f"{t / l0:g}" for t in targets[label]),
                f"{min(factors):.4g} – {max(factors):.4g}",
                f"{s.get('attention_factor', 1.0):.4g}",
                "yes" if s.get("short_factors") else "no",
                _provenance_summary(s.get("provenance") or {}),
            ]
        )
    header = ["label", "method", "context", "s", "λ range", "attention factor", "short factors", "made by"]
    return _table(header, rows, right_from=2, left=(6, 7))


def _provenance_summary(provenance: dict[str, Any]) -> str:
    params = provenance.get("params") or {}
    shown = ", ".join(f"{k}={short_value(v)}" for k, v in params.items() if v is not None)
    if "searcher" in provenance:
        text = f"search by {provenance['searcher']}"
        if provenance.get("evaluations") is not None:
            text += f", {provenance['evaluations']} evaluations"
        if isinstance(provenance.get("score"), int | float):
            text += f", search ppl {provenance['score']:.4g}"
        if provenance.get("critical_floor"):
            text += ", critical floor"
        return text
    return "closed form" + (f" ({shown})" if shown else "")


def sources_table(docs: Sequence[ResultDoc], labels: dict[tuple[str, str], str]) -> str:
    rows = [
        [
            f"`{doc.path}`",
            doc.task,
            doc.model,
            labels[label_key(doc)],
            ", ".join(format_length(int(k)) for k in doc.results) or "-",
            doc.device or "?",
            doc.dtype or "?",
        ]
        for doc in docs
    ]
    return _table(["file", "task", "model", "method", "lengths", "device", "dtype"], rows, right_from=99)


def scored_tasks(result: dict[str, Any]) -> int:
    """Tasks with a score in one length's result."""
    return sum(1 for entry in result.get("tasks", {}).values() if entry.get("score") is not None)


def scored_task_count(section: Section) -> int:
    """Tasks that have a score somewhere in the section: the average leaves unavailable ones (qa without data) out."""
    scored = {
        task
        for series in section.series.values()
        for result in series.results.values()
        for task, entry in result.get("tasks", {}).items()
        if entry.get("score") is not None
    }
    return len(scored)
