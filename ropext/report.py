"""``ropext report``: one Markdown page, with its plots, from the result files of ``ropext eval``.

Result files are grouped into sections by (task, options other than the lengths): numbers are comparable within
a section, whichever model they are of. A ppl corpus counts by its content, not its path (``corpus_groups``).
Inside a section there is one series per (model, scaling); files of the same series (e.g. the same scaling
evaluated at different lengths by different runs) are merged by length. A series' label is the scaling's
``method``, plus the smallest disambiguator that tells apart scalings of the same method with different factors:
the differing method parameters (``dprope:t=0.001``), the target length (``yarn@64k``), or, when neither does,
the result file's stem. In a section with several models, the series of models other than the main one also
name their model (``section_labels``).
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.lengths import format_length

TASK_TITLES = {"ppl": "Perplexity", "passkey": "Passkey retrieval", "ruler": "RULER"}
REQUIRED_KEYS = ("task", "model", "scaling", "options", "results")
METHOD_ORDER = ("original", "none", "pi", "ntk", "dynamic", "yarn", "dprope", "dcis", "longrope")
"""Methods in tables and legends: baselines, closed forms, searchers; others after, in order of appearance."""


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class ResultDoc:
    """One result file of ``ropext eval`` (``ropext.results.ResultFile``'s document)."""

    path: Path
    task: str
    model: str
    scaling: dict[str, Any] | None
    options: dict[str, Any]
    results: dict[str, dict[str, Any]]
    device: str | None = None
    dtype: str | None = None


def load_result(path: Path) -> ResultDoc | None:
    """The result file at ``path``; None for a comparison summary (``bench/eval_methods.py``'s
    ``summary.json``), whose numbers are the per-method result files'. Anything else is an error."""
    if not path.is_file():
        raise RopextError(f"result file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RopextError(
            f"{path} is not a ropext result file (not JSON); pass the --json files of `ropext eval`"
        ) from None
    if isinstance(data, dict) and "task" not in data and _is_comparison_summary(data):
        return None
    if not isinstance(data, dict) or any(key not in data for key in REQUIRED_KEYS):
        raise RopextError(
            f"{path} is not a ropext result file (it needs the keys {', '.join(REQUIRED_KEYS)}); "
            "pass the --json files of `ropext eval`"
        )
    if data["task"] not in TASK_TITLES:
        raise RopextError(f"{path}: unknown task {data['task']!r}; the report knows {', '.join(TASK_TITLES)}")
    scaling, options, results = data["scaling"], data["options"], data["results"]
    if not (scaling is None or isinstance(scaling, dict)) or not isinstance(options, dict):
        raise RopextError(f"{path} is not a ropext result file: 'scaling' or 'options' is not a mapping")
    if not isinstance(results, dict) or not all(_is_length_key(k) and isinstance(v, dict) for k, v in results.items()):
        raise RopextError(f"{path} is not a ropext result file: 'results' must map lengths to results")
    if scaling is not None and not isinstance(scaling.get("factors"), list):
        raise RopextError(f"{path} is not a ropext result file: its scaling has no factors")
    return ResultDoc(
        path, data["task"], str(data["model"]), scaling, options, results, data.get("device"), data.get("dtype")
    )


def _is_length_key(key: str) -> bool:
    return isinstance(key, str) and key.isdigit() and int(key) > 0


def _is_comparison_summary(data: dict[str, Any]) -> bool:
    """``{method: {task: {length: result}}}`` as written by ``bench/eval_methods.py``."""
    return bool(data) and all(
        isinstance(tasks, dict)
        and tasks
        and all(t in TASK_TITLES and isinstance(r, dict) and all(map(_is_length_key, r)) for t, r in tasks.items())
        for tasks in data.values()
    )


def load_results(paths: Sequence[Path]) -> tuple[list[ResultDoc], list[Path]]:
    """The result files in the order given, and the comparison summaries skipped."""
    if not paths:
        raise RopextError("no result files given: pass the --json files of `ropext eval`, e.g. results/*.json")
    docs, skipped = [], []
    for path in dict.fromkeys(paths):  # a file named twice counts once
        doc = load_result(path)
        if doc is None:
            skipped.append(path)
        else:
            docs.append(doc)
    if not docs:
        raise RopextError("none of the files given is a ropext result file; pass the --json files of `ropext eval`")
    return docs, skipped


# ---------------------------------------------------------------------------------------------- labels
SeriesKey = tuple[str, str]
"""(model, ``scaling_key``): one series, the same in every section it appears in."""


def scaling_key(scaling: dict[str, Any] | None) -> str:
    """What makes two scalings evaluate alike: method, factor vectors, attention factor, start tokens
    (and the target length only for ``dynamic``, whose factors depend on it). ``none`` computed for
    32k and for 64k is the same scaling."""
    if scaling is None:
        return "original"
    keep = ["method", "factors", "short_factors", "attention_factor", "start_tokens"]
    if scaling["method"] == "dynamic":
        keep.append("max_position_embeddings")
    return json.dumps({k: scaling.get(k) for k in keep}, sort_keys=True)


def label_key(doc: ResultDoc) -> SeriesKey:
    """What a label names: one scaling (by ``scaling_key``) of one model."""
    return doc.model, scaling_key(doc.scaling)


def method_labels(docs: Iterable[ResultDoc]) -> dict[SeriesKey, str]:
    """A short label for every distinct scaling of each model (by ``label_key``), unique within the model."""
    first: dict[SeriesKey, ResultDoc] = {}
    for doc in docs:
        first.setdefault(label_key(doc), doc)
    by_method: dict[tuple[str, str], list[SeriesKey]] = {}
    for key, doc in first.items():
        by_method.setdefault((doc.model, doc.scaling["method"] if doc.scaling else "original"), []).append(key)
    labels: dict[SeriesKey, str] = {}
    for (_, method), keys in by_method.items():
        if len(keys) == 1:
            labels[keys[0]] = method
            continue
        scalings = {key: first[key].scaling or {} for key in keys}
        labels |= _disambiguate(method, scalings, {key: first[key].path for key in keys})
    return labels


def _disambiguate(method: str, scalings: dict[Any, dict[str, Any]], paths: dict[Any, Path]) -> dict[Any, str]:
    params = {key: (s.get("provenance") or {}).get("params") or {} for key, s in scalings.items()}
    differing = sorted(
        name
        for name in {n for p in params.values() for n in p}
        if len({json.dumps(p.get(name), sort_keys=True) for p in params.values()}) > 1
    )

    def params_part(key: Any) -> str:
        parts = [f"{name}={_short_value(params[key].get(name))}" for name in differing]
        return ":" + ",".join(parts) if parts else ""

    def target_part(key: Any) -> str:
        return "@" + format_length(int(scalings[key]["max_position_embeddings"]))

    for use_params, use_target in ((False, True), (True, False), (True, True)):
        labels = {
            key: method + (params_part(key) if use_params else "") + (target_part(key) if use_target else "")
            for key in scalings
        }
        if len(set(labels.values())) == len(labels):
            return labels
    return {key: f"{labels[key]} ({_file_stem(paths[key])})" for key in scalings}


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _file_stem(path: Path) -> str:
    """``ppl-dcis-32k-32k.json`` -> ``dcis-32k-32k``: the stem without its task prefix."""
    stem = path.stem
    for task in TASK_TITLES:
        stem = stem.removeprefix(f"{task}-")
    return stem


def main_model(keys: Iterable[SeriesKey]) -> str:
    """The model with the most series, the first given on a tie: the base model that fine-tuned checkpoints or
    other models are compared with. It leads the order, and its labels stay unqualified."""
    counts = Counter(model for model, _ in dict.fromkeys(keys))
    return max(counts, key=lambda model: counts[model])  # max keeps the first of equal counts


def series_order(
    keys: Iterable[SeriesKey], labels: dict[SeriesKey, str], targets: dict[SeriesKey, int], main: str
) -> list[SeriesKey]:
    """The main model's series, then other models' in order of appearance. Within a model: methods as in
    METHOD_ORDER, then others in order of first appearance; a method's variants by target length, then by name."""
    keys = list(dict.fromkeys(keys))
    models = [main, *(model for model in dict.fromkeys(model for model, _ in keys) if model != main)]
    methods = list(dict.fromkeys(_base_method(labels[key]) for key in keys))

    def rank(key: SeriesKey) -> tuple[int, int, int, int, str]:
        base = _base_method(labels[key])
        known = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
        return models.index(key[0]), known, methods.index(base), targets.get(key, 0), labels[key]

    return sorted(keys, key=rank)


def _base_method(label: str) -> str:
    return re.split(r"[:@ ]", label, maxsplit=1)[0]


def model_names(models: Sequence[str]) -> dict[str, str]:
    """Each model by its short name (``short_model``), or every model as given when two short names collide."""
    short = {model: short_model(model) for model in models}
    return short if len(set(short.values())) == len(short) else {model: model for model in models}


def section_labels(keys: Sequence[SeriesKey], labels: dict[SeriesKey, str], main: str) -> dict[SeriesKey, str]:
    """Labels within one section. With one model: the model's own labels. With several, the main model's series
    keep theirs, so the familiar rows read as before, and every other series names its model: ``yarn@32k · ckpt``,
    or the model alone when it ran unscaled (a fine-tuned checkpoint places positions by its own config)."""
    models = list(dict.fromkeys(model for model, _ in keys))
    if len(models) == 1:
        return {key: labels[key] for key in keys}
    names = model_names(models)

    def qualified(key: SeriesKey) -> str:
        model, scaling = key
        if model == main:
            return labels[key]
        return names[model] if scaling == "original" else f"{labels[key]} · {names[model]}"

    result = {key: qualified(key) for key in keys}
    if len(set(result.values())) < len(result):  # a model named like a method label: qualify every series
        result = {key: f"{labels[key]} · {names[key[0]]}" for key in keys}
    return result


# ---------------------------------------------------------------------------------------------- corpora
def corpus_identity(doc: ResultDoc) -> str | None:
    """The ppl corpus a result was measured on: the ``corpus_fingerprint`` its lengths carry, or, in files
    written before results had one, the corpus path. None for tasks without a corpus option."""
    if doc.task != "ppl" or "corpus" not in doc.options:
        return None
    fingerprints = sorted({str(r["corpus_fingerprint"]) for r in doc.results.values() if r.get("corpus_fingerprint")})
    return "fingerprint " + "+".join(fingerprints) if fingerprints else f"path {doc.options['corpus']}"


@dataclass
class CorpusGroups:
    """Which corpus identities are one corpus, and the measurements that showed it."""

    root: dict[str, str] = field(default_factory=dict)
    """Each identity -> the identity its group goes by."""
    agreeing: dict[str, dict[SeriesKey, set[int]]] = field(default_factory=dict)
    """Per section identity (``_comparable_options``, as JSON): the series and lengths measured alike on its corpora."""


def corpus_groups(docs: Sequence[ResultDoc]) -> CorpusGroups:
    """Group the ppl corpora that hold the same text.

    Results with one fingerprint share a corpus. The fingerprint hashes the resolved path, size and modification
    time, not the text, so the same file under another path (a copy on the GPU machine) gets another one. Two
    corpora are therefore also one when a series (model and scaling) with otherwise equal options gives the same
    log-likelihood over the same tokens of the same documents on both, at some length: a sum over 10^4 or more
    token losses does not coincide on different text. A series that differs slightly between the two (a
    numerical difference between runs) does not split them again; the section notes the disagreement."""
    parent: dict[str, str] = {}

    def find(identity: str) -> str:
        while parent[identity] != identity:
            identity = parent[identity]
        return identity

    measured: dict[tuple[str, SeriesKey, str], list[tuple[str, dict[str, Any]]]] = {}
    for doc in docs:
        identity = corpus_identity(doc)
        if identity is None:
            continue
        parent.setdefault(identity, identity)
        # The other options must be equal; the corpus is left blank, since its group is what is sought.
        rest = json.dumps(_comparable_options(doc.options, ""), sort_keys=True)
        for length, result in doc.results.items():
            measured.setdefault((rest, label_key(doc), length), []).append((identity, result))
    agreements = []
    for (rest, key, length), entries in measured.items():
        for (a, result_a), (b, result_b) in combinations(entries, 2):
            if a != b and _same_measurement(result_a, result_b):
                parent[find(b)] = find(a)
                agreements.append((rest, a, key, int(length)))
    groups = CorpusGroups({identity: find(identity) for identity in parent})
    for rest, identity, key, length in agreements:
        options = json.loads(rest) | {"corpus": groups.root[identity]}
        groups.agreeing.setdefault(json.dumps(options, sort_keys=True), {}).setdefault(key, set()).add(length)
    return groups


def _same_measurement(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same log-likelihood over the same token count of the same documents."""
    if a.get("nll") is None or a.get("tokens") is None:
        return False
    return all(_same(a.get(name), b.get(name)) for name in ("nll", "tokens", "documents"))


def _comparable_options(options: dict[str, Any], corpus_root: str | None) -> dict[str, Any]:
    """What makes results comparable: the options but the lengths, a ppl corpus by its group (``corpus_root``,
    see ``corpus_groups``) rather than by its path."""
    kept = {name: value for name, value in options.items() if name != "lengths"}
    if corpus_root is not None:
        kept["corpus"] = corpus_root
    return kept


# ---------------------------------------------------------------------------------------------- sections
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
    """What the section is keyed by: ``_comparable_options``."""
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


def short_model(model: str) -> str:
    """A local folder or file by its name (``/data/models/tiny`` -> ``tiny``); hub ids and aliases as they are."""
    return Path(model.rstrip("/")).name if model.startswith(("/", ".", "~")) else model


def build_sections(docs: Sequence[ResultDoc], labels: dict[SeriesKey, str]) -> list[Section]:
    """Sections in task order (ppl, passkey, ruler), then in order of first appearance."""
    corpora = corpus_groups(docs)
    grouped: dict[tuple[str, str], list[ResultDoc]] = {}
    for doc in docs:
        identity = _comparable_options(doc.options, _corpus_root(doc, corpora))
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
    identity = _comparable_options(first.options, _corpus_root(first, corpora))
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
    if not _same(old, new):
        shown = f"{format_length(length)} ({_disagreeing_value(new)} vs {_disagreeing_value(old)})"
        section.disagreements.setdefault((series.label, path), []).append(shown)


def _disagreeing_value(value: Any) -> str:
    """A perplexity with digits enough to show a difference of a few in 10^5 (a numerical difference between runs)."""
    return f"{value:.4f}" if isinstance(value, float) else _short_value(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


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
    return _short_value(section.options.get(name))


# ---------------------------------------------------------------------------------------------- tables
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
            scored, total = _scored_tasks(result), _scored_task_count(section)
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
    shown = ", ".join(f"{k}={_short_value(v)}" for k, v in params.items() if v is not None)
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


# ---------------------------------------------------------------------------------------------- plots
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
OTHER_MODEL_MARKERS = ("*", "X", "h", "p")
"""Markers of the series of models other than the main one, larger, so that they stand out as a group."""


@dataclass(frozen=True)
class Style:
    color: Any
    linestyle: str
    marker: str
    markersize: float = 5


def series_styles(
    order: Sequence[SeriesKey], labels: dict[SeriesKey, str], targets: dict[SeriesKey, int], main: str
) -> dict[SeriesKey, Style]:
    """One colour per method, and one per other model run unscaled (a fine-tuned checkpoint: no method to share);
    a line style per target length when the label names it; a marker per variant of the same colour and target,
    from OTHER_MODEL_MARKERS for models other than the main one. Keyed by series, not by label (labels differ
    between sections), so a series looks the same in every plot."""
    groups = {key: _colour_group(key, labels[key], main) for key in order}
    colours = list(dict.fromkeys(groups.values()))
    palette = _palette(len(colours))
    named_targets = sorted({targets[key] for key in order if "@" in labels[key] and key in targets})
    variants: dict[tuple[str, int, bool], int] = {}
    styles = {}
    for key in order:
        group, other = groups[key], key[0] != main
        target = targets.get(key, 0) if "@" in labels[key] else 0
        variant = variants.get((group, target, other), 0)
        variants[(group, target, other)] = variant + 1
        line = LINESTYLES[named_targets.index(target) % len(LINESTYLES)] if target in named_targets else "-"
        markers = OTHER_MODEL_MARKERS if other else MARKERS
        colour = palette[colours.index(group) % len(palette)]
        styles[key] = Style(colour, line, markers[variant % len(markers)], 8 if other else 5)
    return styles


def _colour_group(key: SeriesKey, label: str, main: str) -> str:
    model, scaling = key
    return f"model {model}" if scaling == "original" and model != main else _base_method(label)


def _palette(count: int) -> list[Any]:
    """tab10, then its lighter shades (tab20's odd entries) when more than ten colours are needed."""
    plt = _pyplot()
    colours = list(plt.get_cmap("tab10").colors)
    return colours if count <= len(colours) else colours + list(plt.get_cmap("tab20").colors[1::2])


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RopextError("ropext report needs matplotlib: pip install 'ropext[plot]'") from None
    return plt


def _length_axis(ax: Any, lengths: Sequence[int]) -> None:
    """Log2 x axis with one tick per length, labelled like 8k."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(lengths)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_length(length) for length in lengths])
    if len(lengths) == 1:
        ax.set_xlim(lengths[0] / 1.5, lengths[0] * 1.5)
    else:
        ax.set_xlim(min(lengths) / 1.25, max(lengths) * 1.25)
    ax.set_xlabel("length (tokens)")


def _figure_title(fig: Any, text: str, fontsize: str | float = "medium") -> None:
    """The title over the whole figure, broken into lines where it would be wider than the figure. A title
    naming several models, corpus paths and options is often wider than the plot; drawn as the axes' title,
    centred over axes that a legend pushes to the left, it was cut off at the figure's edge."""
    title = fig.suptitle(text, fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    room = fig.bbox.width * 0.96
    width = title.get_window_extent(renderer).width
    columns = int(len(text) * room / width) if width > room else 0
    while columns > 10 and title.get_window_extent(renderer).width > room:
        title.set_text(textwrap.fill(text, columns))
        columns -= 4


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def _legend(ax: Any, count: int) -> None:
    if count > 6:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    else:
        ax.legend(fontsize="small")


def _line_figsize(count: int, height: float) -> tuple[float, float]:
    """Wider when the legend moves outside (``_legend``); taller with many series, whose lines crowd together
    (fine-tuned checkpoints beside a base model's scalings)."""
    return (9 if count > 6 else 7, height if count <= 10 else height + 1.6)


def plot_ppl(section: Section, order: list[str], styles: dict[str, Style], path: Path) -> None:
    """Perplexity against length, one line per method; log-scale y, log2-scale x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=_line_figsize(len(order), 4.8), layout="constrained")
    values = []
    for label in order:
        points = sorted((length, r["ppl"]) for length, r in section.series[label].results.items() if "ppl" in r)
        if not points:
            continue
        values += [p for _, p in points]
        _plot_series(ax, points, label, styles[label])
    _log10_axis(ax, values)
    _length_axis(ax, section.lengths)
    ax.set_ylabel("perplexity (log scale)")
    _figure_title(fig, section.plot_title)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(order))
    _save(fig, path)


def _plot_series(ax: Any, points: Sequence[tuple[int, float]], label: str, style: Style) -> None:
    """One series' values against length, in the series' report-wide style."""
    ax.plot(
        *zip(*points, strict=True),
        label=label,
        color=style.color,
        linestyle=style.linestyle,
        marker=style.marker,
        markersize=style.markersize,
    )


def _log10_axis(ax: Any, values: Sequence[float]) -> None:
    """Log y axis labelled with plain numbers (30, 40, 60, 100, ...): as many labelled ticks as the range allows."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    if not values:
        return
    decades = math.log10(max(values) / min(values))
    subs = (1, 2, 3, 4, 5, 6, 7, 8, 9) if decades <= 1 else (1, 2, 3, 4, 6) if decades <= 2.5 else (1, 2, 5)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def plot_passkey(section: Section, order: list[str], path: Path) -> None:
    """One heatmap per method: depth of the key (rows) × length (columns), each cell annotated with its
    accuracy; every panel has the section's lengths, so columns line up (grey: not measured)."""
    import numpy as np

    plt = _pyplot()
    depths, lengths = passkey_depths(section), section.lengths
    columns = min(4, len(order))
    rows = math.ceil(len(order) / columns)
    panel_width, panel_height = 0.62 * len(lengths) + 0.9, 0.3 * len(depths) + 0.75
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(panel_width * columns + 1.3, panel_height * rows + 0.5),
        layout="constrained",
        squeeze=False,
        sharey=True,
    )
    cmap = plt.get_cmap("YlGn").with_extremes(bad="#dddddd")
    image = None
    for ax, label in zip(axes.flat, order, strict=False):
        results = section.series[label].results
        grid = np.array(
            [[results.get(length, {}).get("depths", {}).get(d, np.nan) for length in lengths] for d in depths],
            dtype=float,
        )
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for row, col in np.ndindex(grid.shape):
            value = grid[row, col]
            text, color = ("–", "grey") if np.isnan(value) else (f"{value:.2f}", "white" if value > 0.6 else "black")
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color=color)
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(len(lengths)), [format_length(length) for length in lengths])
        ax.tick_params(labelsize=8, length=0)
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(depths)), depths)
        ax.set_ylabel("depth", fontsize=8)
    for column in range(columns):  # the lowest panel of each column names the x axis
        axes[(len(order) - 1 - column) // columns, column].set_xlabel("length", fontsize=8)
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.04, pad=0.01, label="accuracy")
    _figure_title(fig, f"{section.plot_title}: accuracy by depth of the key and length", fontsize=10)
    _save(fig, path)


def plot_ruler(section: Section, order: list[str], styles: dict[str, Style], path: Path) -> None:
    """RULER's average score against length, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=_line_figsize(len(order), 4.5), layout="constrained")
    for label in order:
        points = ruler_plot_points(section, label)
        if points:
            _plot_series(ax, points, label, styles[label])
    _length_axis(ax, section.lengths)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(f"average score ({_scored_task_count(section)} tasks)")
    _figure_title(fig, section.plot_title)
    ax.grid(True, alpha=0.3)
    _legend(ax, len(order))
    _save(fig, path)


def ruler_plot_points(section: Section, label: str) -> list[tuple[int, float]]:
    """(length, average) of one series. A length with tasks still to run averages fewer tasks than the
    others, so it is not comparable and is left out (the table shows it, marked)."""
    total = _scored_task_count(section)
    return sorted(
        (length, r["average"])
        for length, r in section.series[label].results.items()
        if r.get("average") is not None and _scored_tasks(r) == total
    )


def _scored_tasks(result: dict[str, Any]) -> int:
    """Tasks with a score in one length's result."""
    return sum(1 for entry in result.get("tasks", {}).values() if entry.get("score") is not None)


def _scored_task_count(section: Section) -> int:
    """Tasks that have a score somewhere in the section: the average leaves unavailable ones (qa without data) out."""
    scored = {
        task
        for series in section.series.values()
        for result in series.results.values()
        for task, entry in result.get("tasks", {}).items()
        if entry.get("score") is not None
    }
    return len(scored)


def plot_factors(
    scalings: dict[str, dict[str, Any]], order: list[str], styles: dict[str, Style], model: str, path: Path
) -> None:
    """λ_i against pair index for every scaling in one plot, the original wavelength 2π·θ^(2i/d) of each
    pair on the top axis, and a line where that wavelength reaches L0 (pairs to its right never complete
    a turn within the trained context)."""
    plt = _pyplot()
    first = scalings[order[0]]
    theta, dim, l0 = first["rope_theta"], first["rotary_dim"], first["original_max_position_embeddings"]
    pairs = list(range(dim // 2))
    wavelength = [2 * math.pi * theta ** (2 * i / dim) for i in pairs]
    fig, ax = plt.subplots(figsize=(11 if len(order) > 6 else 9, 5.6), layout="constrained")
    for label in order:
        scaling, style = scalings[label], styles[label]
        ax.plot(
            pairs,
            scaling["factors"],
            label=label,
            color=style.color,
            linestyle=style.linestyle,
            marker=style.marker,
            markersize=3.5,
            linewidth=1.4,
        )
        if scaling.get("short_factors"):
            ax.plot(
                pairs, scaling["short_factors"], label=f"{label} (short)", color=style.color, linestyle=":", linewidth=1
            )
    _log2_axis(ax, [f for label in order for f in scalings[label]["factors"]])
    critical = (dim / 2) * math.log(l0 / (2 * math.pi)) / math.log(theta)  # where the wavelength reaches L0
    if 0 <= critical <= pairs[-1]:
        ax.axvline(critical, color="grey", linestyle="--", linewidth=1)
        ax.text(
            critical,
            0.99,
            f" wavelength = L0 ({format_length(l0)})",
            color="dimgrey",
            fontsize="small",
            va="top",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xlim(-0.5, pairs[-1] + 0.5)
    ax.set_xlabel("pair index i (0 rotates fastest)")
    ax.set_ylabel("factor λ_i (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    layout = f"θ = {theta:g}, d = {dim}, L0 = {format_length(l0)}"
    _figure_title(fig, f"{short_model(model)}: per-pair factors of every scaling ({layout})")
    _wavelength_axis(ax, theta, dim, wavelength)
    _legend(ax, len(order))
    _save(fig, path)


def _log2_axis(ax: Any, values: Sequence[float]) -> None:
    """Log y axis with ticks at powers of two (1, 2, 4, 8), labelled as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator

    low, high = min(values), max(values)
    ax.set_yscale("log", base=2)
    ticks = [2.0**k for k in range(math.floor(math.log2(low)), math.ceil(math.log2(high)) + 1)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.set_ylim(low / 1.15, high * 1.15)


def _wavelength_axis(ax: Any, theta: float, dim: int, wavelength: list[float]) -> None:
    """A top axis giving the original wavelength 2π·θ^(2i/d) of pair i, at powers of ten."""

    def to_wavelength(i):
        import numpy as np

        return 2 * math.pi * np.power(theta, 2 * np.asarray(i, dtype=float) / dim)

    def to_index(w):
        import numpy as np

        return (dim / 2) * np.log(np.maximum(np.asarray(w, dtype=float), 1e-12) / (2 * math.pi)) / math.log(theta)

    axis = ax.secondary_xaxis("top", functions=(to_wavelength, to_index))
    ticks = [10**k for k in range(1, 12) if wavelength[0] <= 10**k <= wavelength[-1]]
    axis.set_xticks(ticks, [_tokens(t) for t in ticks])
    axis.set_xlabel("original wavelength of pair i (tokens)")


def _tokens(value: float) -> str:
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


# ---------------------------------------------------------------------------------------------- page
@dataclass
class Report:
    markdown: Path
    plots: list[Path]
    sections: list[Section]
    skipped: list[Path]


def write_report(paths: Sequence[Path], out: Path, title: str = "ropext report") -> Report:
    """Read the result files, write ``out/report.md`` and its PNGs beside it."""
    _pyplot()  # fail early without matplotlib
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
    return f"`{_short_value(value)}`"


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
