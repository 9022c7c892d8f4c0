"""The perplexity engine of the search (batched candidates, cache, replicas) and its journal, on the tiny Llama."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import ORIGINAL_CONTEXT, CorpusFiles

from ropext.data.tokenized import encode
from ropext.errors import RopextError
from ropext.evaluate.nll import summed_nll
from ropext.methods import METHODS
from ropext.model.apply import apply_scaling
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling
from ropext.search.engine import EngineOptions, PerplexityEngine, frequencies_key
from ropext.search.journal import Journal

WINDOW = 512
"""Longer than the original 256, so every candidate's long vector is the one in use."""
WINDOWS = 3
CANDIDATES_PER_BATCH = 3
"""max_batch_tokens holds 3 candidates × 3 windows: 7 candidates need several forward passes."""


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def windows(tiny_tokenizer: Any, corpus_files: CorpusFiles) -> torch.Tensor:
    ids = [encode(tiny_tokenizer, text) for text in corpus_files.texts]
    rows = [doc[:WINDOW] for doc in ids if len(doc) >= WINDOW][:WINDOWS]
    assert len(rows) == WINDOWS
    return torch.tensor(rows, dtype=torch.int64)


@pytest.fixture(scope="module")
def candidates(layout: RotaryLayout) -> list[RopeScaling]:
    """Closed-form scalings, a random non-monotone vector, and n̂ = 8: seven in all."""
    rng = random.Random(0)
    closed_form = [METHODS.get(name)(layout, WINDOW) for name in ("pi", "yarn", "dprope", "dynamic")]
    yarn = closed_form[1]
    shuffled = RopeScaling(
        method="custom",
        rope_theta=layout.rope_theta,
        rotary_dim=layout.rotary_dim,
        original_max_position_embeddings=layout.original_max_position_embeddings,
        max_position_embeddings=WINDOW,
        factors=tuple(rng.uniform(0.7, 3.0) for _ in range(layout.pairs)),
        attention_factor=1.07,
    )
    with_start_tokens = dataclasses.replace(yarn, start_tokens=8)
    ordered_yarn = dataclasses.replace(yarn, factors=tuple(sorted(yarn.factors, reverse=True)))
    found = [*closed_form, shuffled, with_start_tokens, ordered_yarn]
    assert len({frequencies_key(s) for s in found}) == len(found)
    return found


def engine_for(
    pristine: Any,
    layout: RotaryLayout,
    windows: torch.Tensor,
    replicas: int = 1,
    candidates_per_batch: int = CANDIDATES_PER_BATCH,
) -> PerplexityEngine:
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    options = EngineOptions(
        max_batch_tokens=WINDOW * WINDOWS * CANDIDATES_PER_BATCH, candidates_per_batch=candidates_per_batch
    )
    models = [(copy.deepcopy(pristine), "cpu") for _ in range(replicas)]
    return PerplexityEngine(models, windows, unscaled, options)


def reference_perplexity(pristine: Any, scaling: RopeScaling, windows: torch.Tensor) -> float:
    """A fresh copy of the model, rescaled the way `ropext eval` does it, one window at a time."""
    model = apply_scaling(copy.deepcopy(pristine), scaling)
    total, tokens = 0.0, 0
    for row in windows:
        nll, predicted = summed_nll(model, row[None])
        total, tokens = total + nll.item(), tokens + predicted
    return math.exp(total / tokens)


def assert_rel(actual: float, expected: float, rel: float) -> None:
    assert math.isclose(actual, expected, rel_tol=rel), f"{actual} != {expected} (rel {abs(actual / expected - 1):.2g})"


@pytest.fixture(scope="module")
def batched_scores(
    pristine: Any, layout: RotaryLayout, windows: torch.Tensor, candidates: list[RopeScaling]
) -> list[float]:
    engine = engine_for(pristine, layout, windows, candidates_per_batch=len(candidates))
    # Several candidates share a forward pass, and the call needs several passes.
    assert 2 * WINDOWS <= engine.rows_per_batch < WINDOWS * len(candidates)
    return engine(candidates)


# --------------------------------------------------------------------------- the engine


def test_batched_scores_equal_one_at_a_time_evaluation(
    batched_scores: list[float], pristine: Any, windows: torch.Tensor, candidates: list[RopeScaling]
) -> None:
    for scaling, score in zip(candidates, batched_scores, strict=True):
        assert_rel(score, reference_perplexity(pristine, scaling, windows), 1e-5)


def test_candidates_really_differ(
    batched_scores: list[float], pristine: Any, layout: RotaryLayout, windows: torch.Tensor
) -> None:
    """Guards the comparison above: the scalings move the perplexity far beyond its tolerance."""
    unscaled = METHODS.get("none")(layout, ORIGINAL_CONTEXT)
    baseline = reference_perplexity(pristine, unscaled, windows)
    for score in batched_scores:
        assert abs(score / baseline - 1) > 1e-3
    assert len({round(s, 6) for s in batched_scores}) == len(batched_scores)
    # n̂ = 8 alone (index 5 is YaRN with start_tokens=8) moves it by more than 10x the tolerance.
    assert abs(batched_scores[5] / batched_scores[1] - 1) > 1e-4


def test_score_does_not_depend_on_batch_mates(
    batched_scores: list[float],
    pristine: Any,
    layout: RotaryLayout,
    windows: torch.Tensor,
    candidates: list[RopeScaling],
) -> None:
    for index in (0, 5, len(candidates) - 1):  # alone, in a fresh engine of the same batch shape
        engine = engine_for(pristine, layout, windows, candidates_per_batch=len(candidates))
        (alone,) = engine([candidates[index]])
        assert_rel(alone, batched_scores[index], 1e-6)
    # The same candidates in reverse order (other mates, other batches, other padding).
    engine = engine_for(pristine, layout, windows, candidates_per_batch=len(candidates))
    reversed_scores = engine(candidates[::-1])[::-1]
    for score, expected in zip(reversed_scores, batched_scores, strict=True):
        assert_rel(score, expected, 1e-6)


def test_cache_scores_each_candidate_once(
    batched_scores: list[float],
    pristine: Any,
    layout: RotaryLayout,
    windows: torch.Tensor,
    candidates: list[RopeScaling],
) -> None:
    engine = engine_for(pristine, layout, windows, candidates_per_batch=len(candidates))
    reported: list[tuple[str, float]] = []
    engine.on_result = lambda key, scaling, score: reported.append((key, score))

    first = engine([*candidates[:3], candidates[0]])  # a duplicate in one call is scored once
    assert engine.evaluations == 3
    assert sorted(key for key, _ in reported) == sorted(frequencies_key(s) for s in candidates[:3])
    assert first[0] == first[3]
    assert dict(reported)[frequencies_key(candidates[1])] == first[1]

    reported.clear()
    again = engine(list(reversed(candidates[:3])))
    assert engine.evaluations == 3 and reported == []
    assert again == first[:3][::-1]

    rest = engine(candidates)  # only the four new ones are evaluated
    assert engine.evaluations == len(candidates) and len(reported) == len(candidates) - 3
    for score, expected in zip(rest, batched_scores, strict=True):
        assert_rel(score, expected, 1e-6)


def test_two_replicas_give_the_scores_of_one(
    batched_scores: list[float],
    pristine: Any,
    layout: RotaryLayout,
    windows: torch.Tensor,
    candidates: list[RopeScaling],
) -> None:
    engine = engine_for(pristine, layout, windows, replicas=2, candidates_per_batch=len(candidates))
    reported: list[str] = []
    engine.on_result = lambda key, scaling, score: reported.append(key)
    scores = engine(candidates)
    for score, expected in zip(scores, batched_scores, strict=True):
        assert_rel(score, expected, 1e-6)
    assert sorted(reported) == sorted(frequencies_key(s) for s in candidates)
    assert engine.evaluations == len(candidates)


def test_frequencies_key_covers_what_changes_frequencies(candidates: list[RopeScaling]) -> None:
    yarn = candidates[1]
    variants = [
        yarn,
        dataclasses.replace(yarn, attention_factor=yarn.attention_factor + 1e-9),
        dataclasses.replace(yarn, start_tokens=4),
        dataclasses.replace(yarn, short_factors=yarn.factors),
        dataclasses.replace(yarn, factors=(math.nextafter(yarn.factors[0], math.inf), *yarn.factors[1:])),
    ]
    assert len({frequencies_key(v) for v in variants}) == len(variants)
    assert frequencies_key(dataclasses.replace(yarn, method="other", provenance={"x": 1})) == frequencies_key(yarn)


# --------------------------------------------------------------------------- the journal

IDENTITY: dict[str, Any] = {
    "model": "tiny",
    "corpus": "docs",
    "samples": 2,
    "seed": 0,
    "searcher": "dcis",
    "params": {"candidates": 3, "levels": None},
    "from": None,
}


def write_journal(path: Path, entries: int = 3, identity: dict[str, Any] = IDENTITY) -> None:
    journal = Journal(path, identity)
    for i in range(entries):
        journal.append(f"key{i}", {"factors": [1.0 + i, 2.0], "start_tokens": 0}, 10.0 - i)
    journal.close()


def test_journal_replays_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "search.journal.jsonl"
    write_journal(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["search"] == IDENTITY

    journal = Journal(path, dict(IDENTITY))
    assert journal.scores() == {"key0": 10.0, "key1": 9.0, "key2": 8.0}
    assert journal.entries["key1"]["factors"] == [2.0, 2.0]
    journal.append("key3", {"factors": [4.0, 2.0], "start_tokens": 0}, 7.0)
    journal.close()
    assert len(Journal(path, IDENTITY).scores()) == 4


@pytest.mark.parametrize(
    ("field", "value"), [("seed", 1), ("samples", 3), ("params", {"candidates": 2, "levels": None})]
)
def test_journal_of_another_search_is_refused(field: str, value: Any, tmp_path: Path) -> None:
    path = tmp_path / "search.journal.jsonl"
    write_journal(path)
    before = path.read_bytes()
    with pytest.raises(RopextError, match="different search") as error:
        Journal(path, {**IDENTITY, field: value})
    assert field in str(error.value)
    assert path.read_bytes() == before


def test_journal_damaged_in_the_middle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "search.journal.jsonl"
    write_journal(path)
    lines = path.read_text().splitlines()
    lines[2] = '{"key": "key1", "sco'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RopextError, match="damaged at line 3"):
        Journal(path, IDENTITY)


def test_journal_cut_short_by_a_kill_drops_the_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "search.journal.jsonl"
    write_journal(path)
    with path.open("a") as handle:
        handle.write('{"key": "key3", "factors": [4.0, 2.')  # no newline: the write a kill interrupted

    journal = Journal(path, IDENTITY)
    assert sorted(journal.scores()) == ["key0", "key1", "key2"]
    journal.append("key3", {"factors": [4.0, 2.0], "start_tokens": 0}, 7.0)
    journal.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)
    assert Journal(path, IDENTITY).scores()["key3"] == 7.0


def test_non_journal_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "factors.yaml"
    path.write_text("schema_version: 1\nmethod: yarn\nfactors: [1.0, 2.0]\n")
    with pytest.raises(RopextError, match="not a ropext search journal"):
        Journal(path, IDENTITY)
    other_json = tmp_path / "other.jsonl"
    other_json.write_text('{"format": "something-else"}\n')
    with pytest.raises(RopextError, match="not a ropext search journal"):
        Journal(other_json, IDENTITY)
