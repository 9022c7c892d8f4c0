"""Which ppl corpora are one corpus: by fingerprint, or by a series that measured the same log-likelihood on both."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from ropext.report.labels import SeriesKey, label_key
from ropext.results import ResultDoc


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
    """Per section identity (``comparable_options``, as JSON): the series and lengths measured alike on its corpora."""


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
        rest = json.dumps(comparable_options(doc.options, ""), sort_keys=True)
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
    return all(same_value(a.get(name), b.get(name)) for name in ("nll", "tokens", "documents"))


def comparable_options(options: dict[str, Any], corpus_root: str | None) -> dict[str, Any]:
    """What makes results comparable: the options but the lengths, a ppl corpus by its group (``corpus_root``,
    see ``corpus_groups``) rather than by its path."""
    kept = {name: value for name, value in options.items() if name != "lengths"}
    if corpus_root is not None:
        kept["corpus"] = corpus_root
    return kept


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b
