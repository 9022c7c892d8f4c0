"""Sections: results of one task measured with the same options, of one model or several, with one series per
(model, scaling) merged over the files that hold it; their titles, and the notes on merges and corpus splits."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropext.lengths import format_length
from ropext.report.corpora import CorpusGroups, comparable_options, corpus_groups, corpus_identity, same_value
from ropext.report.labels import SeriesKey, label_key, main_model, section_labels, short_model, short_value
from ropext.report.loading import TASK_TITLES
from ropext.results import ResultDoc


@dataclass
class Series:
    """One (model, scaling)'s results in one section, merged over the files that hold them."""

    label: str
    key: SeriesKey
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)


@dataclass
class Section:
    """Results of one task with the same options (other than the lengths; a ppl corpus by its content, see
    ``corpus_groups``): comparable numbers, of one model or several."""

    task: str
    options: dict[str, Any]
    """The first file's options."""
    identity: dict[str, Any]
    """What the section is keyed by: ``comparable_options``."""
    models: list[str]
    """The main model (``main_model``) first, then the others in order of appearance."""
    corpora: list[str] = field(default_factory=list)
    """ppl: every corpus path its files name, which may be several for one corpus."""
    series: dict[str, Series] = field(default_factory=dict)
    distinct_options: dict[str, str] = field(default_factory=dict)
    """The options that tell this section from others of the same task, as shown (empty if it is alone)."""
    notes: list[str] = field(default_factory=list)
    disagreements: dict[tuple[str, Path], list[str]] = field(default_factory=dict)
    """(label, file) -> the lengths where that file's result differs from an earlier file's, as shown."""
    corpus_note: str | None = None
    """Why several corpus paths count as one corpus."""
    split_note: str | None = None
    """Why sections that differ only by their corpus are not one (``_explain_corpus_splits``)."""
    corpus_identities: list[str] = field(default_factory=list)
    """ppl: the corpus identities (``corpus_identity``) of its files."""

    @property
    def model(self) -> str:
        return self.models[0]

    @property
    def lengths(self) -> list[int]:
        return sorted({length for series in self.series.values() for length in series.results})

    @property
    def title(self) -> str:
        return self._title(lambda model: model)

    @property
    def plot_title(self) -> str:
        return self._title(short_model)

    def _title(self, name: Callable[[str], str]) -> str:
        models = name(self.models[0])
        if len(self.models) == 2:
            models += f" and {name(self.models[1])}"
        elif len(self.models) > 2:
            models += f" and {len(self.models) - 1} other models"
        title = f"{TASK_TITLES[self.task]} — {models}"
        if self.distinct_options:
            title += " (" + ", ".join(f"{k} {v}" for k, v in self.distinct_options.items()) + ")"
        return title


def build_sections(docs: Sequence[ResultDoc], labels: dict[SeriesKey, str]) -> list[Section]:
    """Sections in task order (ppl, passkey, ruler), then in order of first appearance."""
    corpora = corpus_groups(docs)
    grouped: dict[tuple[str, str], list[ResultDoc]] = {}
    for doc in docs:
        identity = comparable_options(doc.options, _corpus_root(doc, corpora))
        grouped.setdefault((doc.task, json.dumps(identity, sort_keys=True)), []).append(doc)
    sections = [_section(group, labels, corpora) for group in grouped.values()]
    ordered = sorted(sections, key=lambda s: list(TASK_TITLES).index(s.task))
    _mark_distinct_options(ordered)
    _explain_corpus_splits(ordered)
    return ordered


def _explain_corpus_splits(sections: Sequence[Section]) -> None:
    """Say, in each of two sections that differ only by their corpus, what differed: their fingerprints, and
    when they read a file at the same path, that the file changed between the runs (the fingerprint hashes
    path, size and modification time). Otherwise two sections of one path look like a mistake."""
    for section in sections:
        if not section.corpus_identities:
            continue
        rest = {k: v for k, v in section.identity.items() if k != "corpus"}
        reasons = []
        for other in sections:
            if other is section or other.task != section.task or not other.corpus_identities:
                continue
            if {k: v for k, v in other.identity.items() if k != "corpus"} != rest:
                continue
            shared = [path for path in section.corpora if path in other.corpora]
            mine, theirs = _fingerprints(section), _fingerprints(other)
            if shared:
                reasons.append(
                    f"Not merged with “{other.title}”, though both read "
                    + " / ".join(f"`{path}`" for path in shared)
                    + f": these results carry corpus fingerprint {mine}, those {theirs}. The fingerprint hashes the "
                    "file's path, size and modification time: the file was changed or replaced between the runs, "
                    "and no series measured on both gives the same log-likelihood to show the text is the same."
                )
            else:
                reasons.append(
                    f"Not merged with “{other.title}”: another corpus (fingerprint {mine} here, "
                    f"{theirs} there), and no series measured on both gives the same log-likelihood."
                )
        if reasons:
            section.split_note = " ".join(reasons)


def _fingerprints(section: Section) -> str:
    """``7748eb8d`` (or several, joined by ``+``); a file written before fingerprints existed: ``none (path …)``."""
    shown = []
    for identity in section.corpus_identities:
        kind, _, value = identity.partition(" ")
        shown += [f"`{fingerprint}`" for fingerprint in value.split("+")] if kind == "fingerprint" else ["none"]
    return " + ".join(dict.fromkeys(shown))


def _corpus_root(doc: ResultDoc, corpora: CorpusGroups) -> str | None:
    identity = corpus_identity(doc)
    return None if identity is None else corpora.root[identity]


def _section(docs: Sequence[ResultDoc], labels: dict[SeriesKey, str], corpora: CorpusGroups) -> Section:
    """One section from the files of one task and comparable options."""
    first = docs[0]
    keys = list(dict.fromkeys(label_key(doc) for doc in docs))
    main = main_model(keys)
    models = [main, *(model for model in dict.fromkeys(model for model, _ in keys) if model != main)]
    identity = comparable_options(first.options, _corpus_root(first, corpora))
    paths = [str(doc.options["corpus"]) for doc in docs if corpus_identity(doc) is not None]
    section = Section(first.task, first.options, identity, models, list(dict.fromkeys(paths)))
    section.corpus_identities = sorted({i for i in map(corpus_identity, docs) if i is not None})
    names = section_labels(keys, labels, main)
    for doc in docs:
        key = label_key(doc)
        series = section.series.setdefault(names[key], Series(names[key], key))
        series.sources.append(doc.path)
        for length_key, result in doc.results.items():
            _merge(section, series, int(length_key), result, doc.path)
    section.notes = [
        f"{label}: {path} disagrees with an earlier file at {', '.join(items)}; the table shows the earlier numbers"
        for (label, path), items in section.disagreements.items()
    ]
    if len(section.corpora) > 1:
        agreeing = corpora.agreeing.get(json.dumps(identity, sort_keys=True), {})
        section.corpus_note = _corpus_note(agreeing, names)
    return section


def _corpus_note(agreeing: dict[SeriesKey, set[int]], names: dict[SeriesKey, str]) -> str:
    if not agreeing:
        return "These paths name one file: the results carry the same corpus fingerprint."
    evidence = "; ".join(
        f"{names[key]} at " + ", ".join(format_length(length) for length in sorted(lengths))
        for key, lengths in agreeing.items()
    )
    return (
        "These paths hold one corpus: the same model and scaling measured on each give the same log-likelihood "
        f"over the same tokens ({evidence})."
    )


def _merge(section: Section, series: Series, length: int, result: dict[str, Any], path: Path) -> None:
    """Add one length's result; a length already present is kept (first file wins), a RULER length's tasks
    are united, and a disagreement is noted in the section."""
    if length not in series.results:
        series.results[length] = result
        return
    kept = series.results[length]
    old: Any
    new: Any
    if section.task == "ruler":
        old_tasks, new_tasks = kept.get("tasks", {}), result.get("tasks", {})
        tasks = {**new_tasks, **old_tasks}
        scores = [entry["score"] for entry in tasks.values() if entry.get("score") is not None]
        series.results[length] = {"tasks": tasks, "average": sum(scores) / len(scores) if scores else None}
        old = {t: e.get("score") for t, e in old_tasks.items() if t in new_tasks}
        new = {t: e.get("score") for t, e in new_tasks.items() if t in old_tasks}
    else:
        metric = "ppl" if section.task == "ppl" else "accuracy"
        old, new = kept.get(metric), result.get(metric)
    if not same_value(old, new):
        shown = f"{format_length(length)} ({_disagreeing_value(new)} vs {_disagreeing_value(old)})"
        section.disagreements.setdefault((series.label, path), []).append(shown)


def _disagreeing_value(value: Any) -> str:
    """A perplexity with digits enough to show a difference of a few in 10^5 (a numerical difference between runs)."""
    return f"{value:.4f}" if isinstance(value, float) else short_value(value)


def _mark_distinct_options(sections: Sequence[Section]) -> None:
    """Name, in the titles, the options that tell sections of one task apart. A corpus shows as its paths,
    which are long: it is named only when the other differing options do not already tell the sections apart."""
    groups: dict[str, list[Section]] = {}
    for section in sections:
        groups.setdefault(section.task, []).append(section)
    for group in groups.values():
        if len(group) < 2:
            continue
        names = sorted({n for s in group for n in s.identity})
        differing = [n for n in names if len({json.dumps(s.identity.get(n), sort_keys=True) for s in group}) > 1]
        without_corpus = [n for n in differing if n != "corpus"]
        if without_corpus and _tells_apart(group, without_corpus):
            differing = without_corpus
        for section in group:
            section.distinct_options = {n: _option_text(section, n) for n in differing}


def _tells_apart(sections: Sequence[Section], names: Sequence[str]) -> bool:
    values = {json.dumps([s.identity.get(n) for n in names], sort_keys=True) for s in sections}
    return len(values) == len(sections)


def _option_text(section: Section, name: str) -> str:
    if name == "corpus" and section.corpora:
        return " / ".join(section.corpora)
    return short_value(section.options.get(name))
