"""The page: ``report.md`` with its parts in order, and the plot files beside it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.report.labels import SeriesKey, label_key, main_model, method_labels, series_order, short_model, short_value
from ropext.report.loading import TASK_TITLES, load_results
from ropext.report.plots import Style, plot_factors, plot_passkey, plot_ppl, plot_ruler, pyplot, series_styles
from ropext.report.sections import Section, build_sections
from ropext.report.tables import (
    passkey_depth_table,
    passkey_table,
    ppl_table,
    ruler_table,
    scalings_table,
    sources_table,
)
from ropext.results import ResultDoc


@dataclass
class Report:
    markdown: Path
    plots: list[Path]
    sections: list[Section]
    skipped: list[Path]


def write_report(paths: Sequence[Path], out: Path, title: str = "ropext report") -> Report:
    """Read the result files, write ``out/report.md`` and its PNGs beside it."""
    pyplot()  # fail early without matplotlib
    docs, skipped = load_results(paths)
    labels = method_labels(docs)
    scalings, targets = _scalings_of(docs)
    widest = {key: max(lengths) for key, lengths in targets.items()}
    keys = [label_key(doc) for doc in docs]
    main = main_model(keys)
    order = series_order(keys, labels, widest, main)
    styles = series_styles(order, labels, widest, main)
    sections = build_sections(docs, labels)
    if out.exists() and not out.is_dir():
        raise RopextError(f"--out {out} is a file; give a folder for report.md and its plots")
    out.mkdir(parents=True, exist_ok=True)
    plots = _Plots(out)
    lines = [f"# {title}", "", _intro(docs, sections), ""]
    for model in dict.fromkeys(d.model for d in docs):
        model_keys = [key for key in order if key[0] == model and key in scalings]
        if model_keys:  # a model evaluated only as it is (a fine-tuned checkpoint) has no scaling to show
            lines += _scalings_part(model, model_keys, labels, scalings, targets, styles, plots)
    for section in sections:
        lines += _section_part(section, order, styles, plots)
    lines += ["## Sources", "", sources_table(docs, labels), ""]
    if skipped:
        note = "Skipped (comparison summaries; their per-method result files hold the same numbers): "
        lines += [note + ", ".join(f"`{p}`" for p in skipped), ""]
    markdown = out / "report.md"
    markdown.write_text("\n".join(lines).rstrip() + "\n")
    return Report(markdown, plots.written, sections, skipped)


def _scalings_of(docs: Sequence[ResultDoc]) -> tuple[dict[SeriesKey, dict[str, Any]], dict[SeriesKey, list[int]]]:
    """Each series' scaling, and every target length it was computed for (``none`` at 32k and at 64k is one)."""
    scalings: dict[SeriesKey, dict[str, Any]] = {}
    targets: dict[SeriesKey, list[int]] = {}
    for doc in docs:
        if doc.scaling is not None:
            key = label_key(doc)
            scalings.setdefault(key, doc.scaling)
            targets[key] = sorted({*targets.get(key, []), int(doc.scaling["max_position_embeddings"])})
    return scalings, targets


def _scalings_part(
    model: str,
    keys: list[SeriesKey],
    labels: dict[SeriesKey, str],
    scalings: dict[SeriesKey, dict[str, Any]],
    targets: dict[SeriesKey, list[int]],
    styles: dict[SeriesKey, Style],
    plots: _Plots,
) -> list[str]:
    """One model's scalings: their table, and a factor plot per rotary layout. Labels are the model's own."""
    by_label = {labels[key]: scalings[key] for key in keys}
    order = [labels[key] for key in keys]
    table = scalings_table(by_label, order, {labels[key]: targets[key] for key in keys})
    lines = [f"## Scalings — {model}", "", table, ""]
    label_styles = {labels[key]: styles[key] for key in keys}
    for group in _same_layout(by_label, order):
        path = plots.path(f"factors-{_slug(model)}")
        plot_factors(by_label, group, label_styles, model, path)
        lines += [f"![factors λ_i against pair index, {model}]({path.name})", ""]
    return lines


def _section_part(section: Section, order: list[SeriesKey], styles: dict[SeriesKey, Style], plots: _Plots) -> list[str]:
    """One section: its options, its table and its plot, and its notes."""
    section_order = _section_order(section, order)
    label_styles = {label: styles[section.series[label].key] for label in section_order}
    lines = [f"## {section.title}", "", *_section_header(section)]
    if not section.lengths:
        return [*lines, "No finished lengths in these files yet.", ""]
    path = plots.path(_plot_stem(section))
    if section.task == "ppl":
        lines += ["Perplexity of the first L tokens (lower is better; best per length in bold):", ""]
        lines += [ppl_table(section, section_order), ""]
        plot_ppl(section, section_order, label_styles, path)
        lines += [f"![perplexity against length]({path.name})", ""]
    elif section.task == "passkey":
        lines += ["Accuracy over all depths (best per length in bold):", ""]
        lines += [passkey_table(section, section_order), ""]
        plot_passkey(section, section_order, path)
        lines += [f"![passkey accuracy by length and depth]({path.name})", ""]
        lines += ["<details><summary>Accuracy per depth</summary>", "", passkey_depth_table(section, section_order)]
        lines += ["", "</details>", ""]
    else:
        lines += ["Score per task (0 to 1; `n/a`: no question data given) and their average:", ""]
        lines += [ruler_table(section, section_order), ""]
        plot_ruler(section, section_order, label_styles, path)
        lines += [f"![RULER average score against length]({path.name})", ""]
    return lines + [f"- note: {note}" for note in section.notes] + ([""] if section.notes else [])


def _section_order(section: Section, order: list[SeriesKey]) -> list[str]:
    """The section's labels: its main model's series first (the rows the others are compared with), then the
    report's order."""
    rank = {key: index for index, key in enumerate(order)}
    series = sorted(section.series.values(), key=lambda s: (s.key[0] != section.model, rank[s.key]))
    return [s.label for s in series]


def _intro(docs: Sequence[ResultDoc], sections: Sequence[Section]) -> str:
    models = ", ".join(dict.fromkeys(d.model for d in docs))
    tasks = ", ".join(dict.fromkeys(TASK_TITLES[s.task] for s in sections))
    return (
        f"Made by `ropext report` from {len(docs)} result files of `ropext eval`: {tasks} on {models}. "
        "Sections group results of the same task measured with the same options (a corpus by its content, "
        "whatever its path), so numbers within a section are comparable, across models too. A method's label is "
        "the scaling's method, with its differing parameters (`:t=0.001`) or target length (`@64k`) when several "
        "scalings of one method appear; in a section with several models, the rows of models other than the "
        "first named also name their model (`yarn@32k · ckpt`, or `ckpt` for a model run as it is)."
    )


def _section_header(section: Section) -> list[str]:
    """The section's models (when several) and its options, a corpus by every path it was read from."""
    lines = []
    if len(section.models) > 1:
        lines += ["Models: " + ", ".join(f"`{model}`" for model in section.models) + ".", ""]
    shown = [(k, v) for k, v in section.options.items() if k != "lengths" and v is not None]
    options = ", ".join(f"{k} {_option_value(section, k, v)}" for k, v in shown)
    note = f" {section.corpus_note}" if section.corpus_note else ""
    lines += [f"Options: {options}.{note}", ""]
    return [*lines, section.split_note, ""] if section.split_note else lines


def _option_value(section: Section, name: str, value: Any) -> str:
    if name == "corpus" and section.corpora:
        return " / ".join(f"`{path}`" for path in section.corpora)
    return f"`{short_value(value)}`"


def _same_layout(scalings: dict[str, dict[str, Any]], order: list[str]) -> list[list[str]]:
    """Labels grouped by rotary layout (θ, d, L0): one factor plot per layout."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for label in order:
        s = scalings[label]
        groups.setdefault((s["rope_theta"], s["rotary_dim"], s["original_max_position_embeddings"]), []).append(label)
    return list(groups.values())


def _plot_stem(section: Section) -> str:
    """``ppl-smollm2-135m-skip_docs-5``: the task, the model and the options that set the section apart, a
    corpus by its file names (the title keeps the full paths)."""
    parts = [section.task, short_model(section.model)]
    for name, text in section.distinct_options.items():
        if name == "corpus" and section.corpora:
            text = "-".join(dict.fromkeys(Path(path).name for path in section.corpora))
        parts += [name, text]
    return _slug("-".join(parts))


def _slug(text: str) -> str:
    """A file-name-safe version of ``text`` (a local model path by its last part)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", short_model(text)).strip("-.") or "model"


class _FileNames:
    """Unique PNG names: ``ppl-smollm2-135m.png``, then ``ppl-smollm2-135m-2.png``, ..."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, stem: str) -> str:
        name, n = f"{stem}.png", 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}.png"
        self.used.add(name)
        return name


class _Plots:
    """The report's plot files: unique names in ``out``, and every plot written, in order."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.names = _FileNames()
        self.written: list[Path] = []

    def path(self, stem: str) -> Path:
        path = self.out / self.names.take(stem)
        self.written.append(path)
        return path
