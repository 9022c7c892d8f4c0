"""Search objectives: the needle windows, answer-only scoring, determinism, journals and plugins, on the tiny Llama."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import CorpusFiles, assert_clean_error, assert_ok, run_cli

from ropext.data.tokenized import encode
from ropext.methods import METHODS
from ropext.model.layout import RotaryLayout
from ropext.scaling import RopeScaling
from ropext.search.engine import EngineOptions, PerplexityEngine
from ropext.search.objectives import (
    ANSWER_TEXT,
    MIX_WEIGHT,
    NEEDLE_TEXT,
    OBJECTIVES,
    QUESTION_TEXT,
    ObjectiveWindows,
    needle_windows,
)

WINDOW = 512
WINDOWS = 3


@pytest.fixture(scope="module")
def documents(tiny_tokenizer: Any, corpus_files: CorpusFiles) -> torch.Tensor:
    ids = [encode(tiny_tokenizer, text) for text in corpus_files.texts]
    return torch.tensor([doc[:WINDOW] for doc in ids if len(doc) >= WINDOW][:WINDOWS], dtype=torch.int64)


def tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def find(row: list[int], part: list[int]) -> int:
    hits = [i for i in range(len(row) - len(part) + 1) if row[i : i + len(part)] == part]
    assert len(hits) == 1, f"expected the part once, found it {len(hits)} times"
    return hits[0]


def test_needle_windows_have_the_needle_at_its_depth_and_the_answer_at_the_end(
    tiny_tokenizer: Any, documents: torch.Tensor
) -> None:
    scored = needle_windows(tiny_tokenizer, documents, seed=3)
    assert tuple(scored.ids.shape) == (WINDOWS, WINDOW)
    question = tokens(tiny_tokenizer, QUESTION_TEXT)
    depths = scored.details["depths"]
    # Stratified: one depth per third of (0, 1), in order.
    for i, depth in enumerate(depths):
        assert i / WINDOWS < depth < (i + 1) / WINDOWS
    for i, row in enumerate(scored.ids.tolist()):
        answer_length = scored.answer_lengths[i]
        answer = tiny_tokenizer.decode(row[-answer_length:]).strip()
        assert len(answer) == 7 and answer.isdigit()
        needle = tokens(tiny_tokenizer, NEEDLE_TEXT.format(number=int(answer)))
        assert row[-answer_length:] == tokens(tiny_tokenizer, ANSWER_TEXT.format(number=int(answer)))
        assert row[-answer_length - len(question) : -answer_length] == question
        at = find(row, needle)
        assert at == scored.details["needle_positions"][i]
        room = WINDOW - len(needle) - len(question) - answer_length
        assert abs(at / room - depths[i]) < 1 / room + 1e-3
        # The text around the needle is the document's own, in order.
        assert row[:at] + row[at + len(needle) : at + len(needle) + room - at] == documents[i, :room].tolist()


def test_needle_windows_are_fixed_by_the_seed(tiny_tokenizer: Any, documents: torch.Tensor) -> None:
    first, again = needle_windows(tiny_tokenizer, documents, 3), needle_windows(tiny_tokenizer, documents, 3)
    other = needle_windows(tiny_tokenizer, documents, 4)
    assert torch.equal(first.ids, again.ids) and first.details == again.details
    assert not torch.equal(first.ids, other.ids)


def engine_for(pristine: Any, layout: RotaryLayout, scored: ObjectiveWindows, per_batch: int) -> PerplexityEngine:
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    options = EngineOptions(max_batch_tokens=WINDOW * WINDOWS * per_batch, candidates_per_batch=per_batch)
    model = [(copy.deepcopy(pristine), "cpu")]
    return PerplexityEngine(model, scored.ids, unscaled, options, scored.answer_lengths, scored.mix_weight)


def test_only_the_answer_tokens_are_scored(
    pristine: Any, layout: RotaryLayout, tiny_tokenizer: Any, documents: torch.Tensor
) -> None:
    scored = needle_windows(tiny_tokenizer, documents, seed=1)
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    [score] = engine_for(pristine, layout, scored, 1)([unscaled])
    # Directly in transformers: full logits, log-softmax, the answer positions only.
    mixed = dataclasses.replace(scored, mix_weight=MIX_WEIGHT)
    [mix_score] = engine_for(pristine, layout, mixed, 1)([unscaled])
    total, count, every = 0.0, 0, 0.0
    with torch.no_grad():
        for row, answer_length in zip(scored.ids, scored.answer_lengths, strict=True):
            logits = pristine(input_ids=row[None]).logits[0].double()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            targets = row[1:]
            picked = -logprobs[torch.arange(WINDOW - 1), targets]
            total += picked[-answer_length:].sum().item()
            count += answer_length
            every += picked.sum().item()
    whole = every / (WINDOWS * (WINDOW - 1))
    assert math.isclose(score, math.exp(total / count), rel_tol=1e-5)
    assert not math.isclose(score, math.exp(whole), rel_tol=1e-2)  # not the whole window's perplexity
    # mix: the geometric mean of the windows' perplexity and the answers'.
    expected_mix = math.exp((1 - MIX_WEIGHT) * whole + MIX_WEIGHT * total / count)
    assert math.isclose(mix_score, expected_mix, rel_tol=1e-5)
    assert not math.isclose(mix_score, score, rel_tol=1e-2)


def test_a_candidate_scores_the_same_alone_and_batched(
    pristine: Any, layout: RotaryLayout, tiny_tokenizer: Any, documents: torch.Tensor
) -> None:
    scored = needle_windows(tiny_tokenizer, documents, seed=2)
    candidates = [METHODS.get(name)(layout, WINDOW) for name in ("pi", "yarn", "ntk")]
    together = engine_for(pristine, layout, scored, len(candidates))(candidates)
    alone = [engine_for(pristine, layout, scored, 1)([c])[0] for c in candidates]
    assert together == alone
    assert len(set(together)) == len(together)


# --------------------------------------------------------------------------------------------- CLI


def search(model: Path, corpus: Path, out: Path, *extra: str) -> Any:
    return run_cli(
        "search", "--model", model, "--method", "dcis", "-t", "1k", "--corpus", corpus, "--samples", "2",
        "--param", "candidates=2", "--out", out, *extra,
    )  # fmt: skip


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.with_name(out.name + ".journal.jsonl").read_text().splitlines()[1:]]


def test_needle_search_resumes_from_its_journal_and_records_its_objective(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    resumed, straight = tmp_path / "resumed.yaml", tmp_path / "straight.yaml"
    assert_ok(search(tiny_model, corpus_files.folder, resumed, "--objective", "needle", "--budget", "4"))
    assert len(records(resumed)) == 4
    resumed.unlink()
    assert_ok(search(tiny_model, corpus_files.folder, resumed, "--objective", "needle"))
    assert_ok(search(tiny_model, corpus_files.folder, straight, "--objective", "needle"))
    a, b = RopeScaling.load(resumed), RopeScaling.load(straight)
    assert a.provenance["replayed_evaluations"] == 4
    assert a.factors == b.factors and a.provenance["score"] == b.provenance["score"]
    assert a.provenance["objective"] == "needle"
    mixed = tmp_path / "mix.yaml"
    assert_ok(search(tiny_model, corpus_files.folder, mixed, "--objective", "mix", "--budget", "2"))
    assert RopeScaling.load(mixed).provenance["objective_details"]["needle_weight"] == MIX_WEIGHT
    assert len(a.provenance["objective_details"]["depths"]) == 2
    assert (
        "objective"
        in json.loads(resumed.with_name(resumed.name + ".journal.jsonl").read_text().split("\n")[0])["search"]
    )
    # The ppl journal is another search: refused, with the objective named.
    ppl = tmp_path / "ppl.yaml"
    assert_ok(search(tiny_model, corpus_files.folder, ppl, "--budget", "2"))
    ppl.unlink()
    header = json.loads(ppl.with_name(ppl.name + ".journal.jsonl").read_text().split("\n")[0])
    assert "objective" not in header["search"]  # journals of ppl searches are as before objectives existed
    refused = search(tiny_model, corpus_files.folder, ppl, "--objective", "needle")
    assert_clean_error(refused, "different search", "objective")
    assert len(records(ppl)) == 2  # nothing computed is lost


def test_unknown_objective_is_one_line_with_the_known_names(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "x.yaml"
    result = search(tiny_model, corpus_files.folder, out, "--objective", "neddle")
    assert_clean_error(result, "unknown objective 'neddle'", "needle", "ppl")
    assert not out.exists() and not out.with_name(out.name + ".journal.jsonl").exists()


class LastTokens:
    """A toy objective: the perplexity of the last 5 tokens of each ppl window."""

    name = "last5"
    provenance_name = "last5"

    def windows(self, tokenizer: Any, request: Any, length: int) -> ObjectiveWindows:
        plain = OBJECTIVES.get("ppl").windows(tokenizer, request, length)
        return ObjectiveWindows(plain.ids, (5,) * plain.ids.shape[0], details={"tokens": 5})


def test_a_plugin_objective_drives_the_search(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("_entries", "_alias_of", "_loaded"):
        monkeypatch.setattr(OBJECTIVES, name, dict(getattr(OBJECTIVES, name)))
    OBJECTIVES.register("last5", LastTokens(), "the last 5 tokens of each window")
    out, ppl = tmp_path / "last5.yaml", tmp_path / "ppl.yaml"
    assert_ok(search(tiny_model, corpus_files.folder, out, "--objective", "last5", "--budget", "3"))
    assert_ok(search(tiny_model, corpus_files.folder, ppl, "--budget", "3"))
    scaling = RopeScaling.load(out)
    assert scaling.provenance["objective"] == "last5"
    assert scaling.provenance["objective_details"] == {"tokens": 5, "answer_tokens": [5, 5]}
    assert RopeScaling.load(ppl).provenance["objective"] == "perplexity"
    assert [r["score"] for r in records(out)] != [r["score"] for r in records(ppl)]


def test_mix_under_torchrun_scores_what_one_process_scores(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    # Two CPU processes (gloo) split the batches; both the answers' and every token's sums are gathered.
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    extra = ("--objective", "mix", "--budget", "4")
    assert_ok(search(tiny_model, corpus_files.folder, one, *extra))
    args = [
        "search", "--model", tiny_model, "--method", "dcis", "-t", "1k", "--corpus", corpus_files.folder,
        "--samples", "2", "--param", "candidates=2", "--out", two, *extra,
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ropext", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert RopeScaling.load(two).provenance["processes"] == 2
    assert [(r["key"], r["score"]) for r in records(two)] == [(r["key"], r["score"]) for r in records(one)]
