"""Labels of series: a scaling's method plus the smallest disambiguator that tells apart scalings of the same
method with different factors; the main model of a set of series; the order of series in tables and legends."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ropext.lengths import format_length
from ropext.report.loading import TASK_TITLES
from ropext.results import ResultDoc


def method_order() -> tuple[str, ...]:
    """Methods in tables and legends: the unscaled model, then the closed-form methods and the searchers in
    the order their registries hold them (built-ins as their package registers them, plugins after). Labels of
    no registered method come after, in order of appearance."""
    from ropext.methods import METHODS
    from ropext.search import SEARCHERS

    return ("original", *METHODS.names_in_order(), *SEARCHERS.names_in_order())


SeriesKey = tuple[str, str]
"""(model, ``series_scaling_key``): one series, the same in every section it appears in."""


def series_scaling_key(scaling: dict[str, Any] | None) -> str:
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
    """What a label names: one scaling (by ``series_scaling_key``) of one model."""
    return doc.model, series_scaling_key(doc.scaling)


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
        parts = [f"{name}={short_value(params[key].get(name))}" for name in differing]
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


def short_value(value: Any) -> str:
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
    `method_order`, then others in order of first appearance; a method's variants by target length, then by name."""
    keys = list(dict.fromkeys(keys))
    known_order = method_order()
    models = [main, *(model for model in dict.fromkeys(model for model, _ in keys) if model != main)]
    methods = list(dict.fromkeys(base_method(labels[key]) for key in keys))

    def rank(key: SeriesKey) -> tuple[int, int, int, int, str]:
        base = base_method(labels[key])
        known = known_order.index(base) if base in known_order else len(known_order)
        return models.index(key[0]), known, methods.index(base), targets.get(key, 0), labels[key]

    return sorted(keys, key=rank)


def base_method(label: str) -> str:
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


def short_model(model: str) -> str:
    """A local folder or file by its name (``/data/models/tiny`` -> ``tiny``); hub ids and aliases as they are."""
    return Path(model.rstrip("/")).name if model.startswith(("/", ".", "~")) else model
