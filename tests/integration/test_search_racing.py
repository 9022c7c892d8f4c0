"""Racing on the tiny Llama: the engine's stages and replicas, and `ropext search --race` end to end."""

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
from integration_support import CorpusFiles, assert_clean_error, assert_ok, run_cli

from ropext.data.tokenized import encode
from ropext.methods import METHODS
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling
from ropext.search.engine import EngineOptions, PerplexityEngine, frequencies_key
from ropext.search.racing import DEFAULT_MARGIN, SCHEDULE, Racing

WINDOW = 512
WINDOWS = 5
"""Stages: window 0, windows 1-2, windows 3-4."""


@pytest.fixture(scope="module")
def windows(tiny_tokenizer: Any, corpus_files: CorpusFiles) -> torch.Tensor:
    ids = [encode(tiny_tokenizer, text) for text in corpus_files.texts]
    rows = [doc[i : i + WINDOW] for doc in ids for i in (0, WINDOW) if len(doc) >= i + WINDOW][:WINDOWS]
    assert len(rows) == WINDOWS
    return torch.tensor(rows, dtype=torch.int64)


@pytest.fixture(scope="module")
def candidates(layout: RotaryLayout) -> list[RopeScaling]:
    """YaRN (the bound) and six others: closed forms and random vectors, some far worse than YaRN."""
    rng = random.Random(1)
    found = [METHODS.get(name)(layout, WINDOW) for name in ("yarn", "pi", "ntk", "dprope")]
    yarn = found[0]
    for low, high in ((0.7, 3.0), (1.0, 8.0), (2.0, 16.0)):
        found.append(dataclasses.replace(yarn, factors=tuple(rng.uniform(low, high) for _ in range(layout.pairs))))
    return found


def engine_for(pristine: Any, layout: RotaryLayout, windows: torch.Tensor, racing: Racing | None, replicas: int = 1):
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    options = EngineOptions(max_batch_tokens=WINDOW * 4, candidates_per_batch=3)
    models = [(copy.deepcopy(pristine), "cpu") for _ in range(replicas)]
    return PerplexityEngine(models, windows, unscaled, options, racing=racing)


@pytest.fixture(scope="module")
def full(pristine: Any, layout: RotaryLayout, windows: torch.Tensor, candidates: list[RopeScaling]) -> list[float]:
    return engine_for(pristine, layout, windows, None)(candidates)


def bound_and_margin(full: list[float]) -> tuple[int, float]:
    """The best candidate as the bound, and a margin of the median gap to it (the random model's
    perplexities lie close together): about half the others fall beyond it."""
    best = min(range(len(full)), key=lambda i: full[i])
    gaps = sorted(math.log(score / full[best]) for i, score in enumerate(full) if i != best)
    return best, gaps[len(gaps) // 2]


def test_racing_scores_the_survivors_as_a_full_evaluation_does_and_drops_only_worse_ones(
    pristine: Any, layout: RotaryLayout, windows: torch.Tensor, candidates: list[RopeScaling], full: list[float]
) -> None:
    best, margin = bound_and_margin(full)
    engine = engine_for(pristine, layout, windows, Racing(margin))
    rest = [c for i, c in enumerate(candidates) if i != best]
    assert engine([candidates[best]]) == [full[best]]
    raced = engine(rest, bound=frequencies_key(candidates[best]))
    assert 0 < len(engine.raced) < len(rest), f"the test needs some but not all raced out: {raced}"
    for mine, theirs in zip(raced, [s for i, s in enumerate(full) if i != best], strict=True):
        assert mine == theirs or (mine == math.inf and theirs > full[best]), (mine, theirs, full[best])
    # A raced-out candidate keeps the windows it was scored on, in window order.
    for key, seen in engine.raced.items():
        assert seen in (1, 3) and len(engine.window_values[key].nll) == seen


def test_a_margin_nobody_reaches_gives_the_full_scores_bit_for_bit(
    pristine: Any, layout: RotaryLayout, windows: torch.Tensor, candidates: list[RopeScaling], full: list[float]
) -> None:
    engine = engine_for(pristine, layout, windows, Racing(1e9))
    engine(candidates[:1])
    assert engine(candidates[1:], bound=frequencies_key(candidates[0])) == full[1:] and engine.raced == {}


def test_two_replicas_race_as_one(
    pristine: Any, layout: RotaryLayout, windows: torch.Tensor, candidates: list[RopeScaling], full: list[float]
) -> None:
    best, margin = bound_and_margin(full)
    rest = [c for i, c in enumerate(candidates) if i != best]
    results = []
    for replicas in (1, 2):
        engine = engine_for(pristine, layout, windows, Racing(margin), replicas)
        reported: list[str] = []
        engine.on_result = lambda key, scaling, score, reported=reported: reported.append(key)
        engine([candidates[best]])
        scores = engine(rest, bound=frequencies_key(candidates[best]))
        results.append((scores, engine.raced, engine.window_values, sorted(reported)))
    assert results[0] == results[1] and results[0][1]


# --------------------------------------------------------------------------------------------- CLI


def search(model: Path, corpus: Path, out: Path, *extra: str) -> Any:
    # The mix objective on 3 windows: the tiny model's answers are noisy, so DCIS races many proposals out.
    return run_cli(
        "search", "--model", model, "--method", "dcis", "-t", "1k", "--corpus", corpus, "--samples", "3",
        "--param", "candidates=2", "--objective", "mix", "--out", out, *extra,
    )  # fmt: skip


def journal_of(out: Path) -> Path:
    return out.with_name(out.name + ".journal.jsonl")


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal_of(out).read_text().splitlines()[1:]]


@dataclasses.dataclass(frozen=True)
class Raced:
    out: Path
    scaling: RopeScaling


@pytest.fixture(scope="module")
def raced(tiny_model: Path, corpus_files: CorpusFiles, tmp_path_factory: pytest.TempPathFactory) -> Raced:
    out = tmp_path_factory.mktemp("raced") / "raced.yaml"
    assert_ok(search(tiny_model, corpus_files.folder, out, "--race"))
    return Raced(out, RopeScaling.load(out))


def test_a_raced_search_records_what_it_raced_out(raced: Raced) -> None:
    prov = raced.scaling.provenance
    racing = prov["racing"]
    assert racing["margin"] == DEFAULT_MARGIN and racing["schedule"] == SCHEDULE
    entries = records(raced.out)
    out_raced = [e for e in entries if e["score"] is None]
    assert racing["raced_out"] == len(out_raced) > 0
    assert racing["window_evaluations_saved"] == sum(3 - e["raced_after_windows"] for e in out_raced)
    assert all(len(e["window_nll"]) == e["raced_after_windows"] for e in out_raced)
    assert all(len(e["window_nll"]) == len(e["window_whole"]) == 3 for e in entries if e["score"] is not None)
    assert prov["evaluations"] == len(entries)


def test_a_killed_raced_search_resumes_to_the_uninterrupted_result(
    raced: Raced, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "resumed.yaml"
    straight = journal_of(raced.out).read_text().split("\n")
    # A kill mid-way: the header, the first half of the records and a line cut short.
    kept = (len(straight) - 2) // 2
    journal_of(out).write_text("\n".join(straight[: 1 + kept]) + "\n" + straight[1 + kept][:30])
    assert_ok(search(tiny_model, corpus_files.folder, out, "--race"))
    resumed = RopeScaling.load(out)
    expected = raced.scaling.provenance
    assert resumed.factors == raced.scaling.factors and resumed.provenance["score"] == expected["score"]
    assert resumed.provenance["replayed_evaluations"] == kept
    assert resumed.provenance["racing"] == expected["racing"]
    assert [(e["key"], e["score"], e["window_nll"]) for e in records(out)] == [
        (e["key"], e["score"], e["window_nll"]) for e in records(raced.out)
    ]


def test_journals_resume_only_under_the_same_racing_settings(
    raced: Raced, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = raced.out
    header = json.loads(journal_of(out).read_text().split("\n")[0])["search"]
    assert header["racing"] == {"margin": DEFAULT_MARGIN, "schedule": SCHEDULE}
    before = journal_of(out).read_bytes()
    copy_out = tmp_path / "copy.yaml"
    journal_of(copy_out).write_bytes(before)
    for extra in (("--no-race",), ("--race", "--race-margin", "0.02")):
        assert_clean_error(search(tiny_model, corpus_files.folder, copy_out, *extra), "different search", "racing")
        assert journal_of(copy_out).read_bytes() == before  # nothing computed is lost
    plain = tmp_path / "plain.yaml"
    assert_ok(search(tiny_model, corpus_files.folder, plain, "--no-race", "--budget", "3"))
    assert "racing" not in json.loads(journal_of(plain).read_text().split("\n")[0])["search"]
    assert "racing" not in RopeScaling.load(plain).provenance
    assert_clean_error(search(tiny_model, corpus_files.folder, plain, "--race"), "different search", "racing")


def test_a_journal_from_before_racing_resumes_under_no_race(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    straight, old = tmp_path / "straight.yaml", tmp_path / "old.yaml"
    assert_ok(search(tiny_model, corpus_files.folder, straight, "--no-race"))
    lines = journal_of(straight).read_text().split("\n")
    # What ropext wrote before racing existed: no per-window values, and half the search done.
    stripped = [lines[0]]
    for line in lines[1 : 1 + (len(lines) - 2) // 2]:
        entry = json.loads(line)
        entry.pop("window_nll"), entry.pop("window_whole")
        stripped.append(json.dumps(entry))
    journal_of(old).write_text("\n".join(stripped) + "\n")
    assert_ok(search(tiny_model, corpus_files.folder, old, "--no-race"))
    a, b = RopeScaling.load(old), RopeScaling.load(straight)
    assert a.factors == b.factors and a.provenance["score"] == b.provenance["score"]
    assert a.provenance["replayed_evaluations"] == len(stripped) - 1


@pytest.mark.parametrize("margin", ["-0.5", "nan", "inf"])
def test_a_bad_race_margin_is_one_clean_error(
    margin: str, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "x.yaml"
    assert_clean_error(search(tiny_model, corpus_files.folder, out, "--race-margin", margin), "--race-margin", ">= 0")
    assert not out.exists() and not journal_of(out).exists()
