"""`ropext finetune --practice KINDS` on the tiny tokenizer: what each kind's window holds and its answer mask,
which kind a window draws, that `single` draws exactly what it drew before kinds existed, and bad input.
The needles' placement shared by every kind is in test_finetune_needles.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from integration_support import CorpusFiles, assert_clean_error, assert_ok, run_cli, run_cli_subprocess
from practice_support import check_practice_window

from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.loading import load_layout
from ropext.scaling import RopeScaling
from ropext.train.needles import (
    KINDS,
    MULTI_QUERY,
    MULTI_VALUE,
    NEEDLES,
    SINGLE,
    VALUES,
    NeedlePlan,
    Practice,
    parse_practice,
)

LENGTH, TARGET = 512, 1024

RECORDED = [
    # (seed, window, words, numbers, asked, depths, needle_starts, answer tokens, sha256 of the ids' bytes [:16]),
    # computed before --practice existed: `--practice single` must draw and build exactly these windows
    (0, 0, ("ground", "cub", "drop", "number"), (203786, 143992, 394244, 961308), 0,
     (0.09728533035709204, 0.3703931798203003, 0.5713104135909124, 0.8708701774975184), (12, 69, 119, 181), 8,
     "47bd6edcfd31ccd9"),
    (0, 2, ("clover", "ladybug", "beck", "diamond"), (518314, 180099, 815845, 682766), 0,
     (0.06251982591379852, 0.35763163186293323, 0.5980733590382117, 0.9584587963806375), (7, 66, 122, 187), 8,
     "7dc6d5e613eaaaba"),
    (0, 6, ("deer", "scrim", "karate", "investment"), (134218, 727359, 770427, 992897), 3,
     (0.015388600785432215, 0.3061384417814793, 0.5932544828864339, 0.805354005619311), (2, 59, 117, 166), 8,
     "e636876712b48d99"),
    (5, 0, ("hill", "purse", "netball", "beginning"), (148010, 569148, 543210, 859955), 0,
     (0.03582836480195222, 0.3195948892185144, 0.5360167407988805, 0.8753639950171019), (4, 62, 114, 181), 8,
     "ab869034e60e6657"),
    (5, 5, ("contrary", "caravan", "guitar", "string"), (386376, 609757, 148417, 494071), 0,
     (0.017979533340013627, 0.3321661026526018, 0.6033612732209591, 0.8772493553219264), (2, 64, 121, 175), 8,
     "b5ba49cdf2c56e53"),
    (5, 6, ("mushroom", "battery", "advent", "decimal"), (854951, 636546, 696347, 874618), 0,
     (0.1841407281574268, 0.439884871257163, 0.6463701246089931, 0.9213885353730539), (19, 75, 123, 176), 8,
     "474137f18a119db7"),
]  # fmt: skip
RECORDED_BATCHES = {0: ("a11f3d00ffde7c22", [0, 0, 8]), 5: ("b6844f0dfab350f8", [0, 0, 8])}
"""seed: (sha256 of `batch(windows, 7)`'s ids [:16], answer tokens per row), before --practice existed."""


def _digest(ids: np.ndarray) -> str:
    return hashlib.sha256(ids.tobytes()).hexdigest()[:16]


def _windows(count: int, length: int = LENGTH, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, 500, (count, length), dtype=np.int64)


@pytest.mark.parametrize("kinds", [None, (SINGLE,)])
def test_single_draws_and_builds_what_it_did_before_kinds_existed(tiny_tokenizer, kinds) -> None:
    windows = _windows(3, length=256, seed=11)
    chosen = {} if kinds is None else {"kinds": kinds}
    for seed in (0, 5):
        plan = NeedlePlan(256, 0.4, seed=seed, tokenizer=tiny_tokenizer, **chosen)
        recorded = [r for r in RECORDED if r[0] == seed]
        assert [k for k in range(40) if plan.carries(k)][:3] == [r[1] for r in recorded]
        for row, (_, k, words, numbers, asked, depths, starts, answer, digest) in enumerate(recorded):
            ids, practice = plan.insert(windows[row], k)
            assert practice == Practice(words, numbers, (asked,), depths, starts, answer, SINGLE)
            assert _digest(ids) == digest
        ids, mask = plan.batch(windows, 7)
        assert (_digest(ids), mask.sum(axis=1).tolist()) == RECORDED_BATCHES[seed]


def _practice_of(kind: str, tokenizer, count: int = 12) -> list[Practice]:
    plan = NeedlePlan(LENGTH, 0.99, seed=3, tokenizer=tokenizer, kinds=(kind,))
    windows = _windows(count)
    return [check_practice_window(plan, windows[k], k, tokenizer) for k in range(count) if plan.carries(k)]


def test_a_single_window_asks_one_code_among_four(tiny_tokenizer) -> None:
    for practice in _practice_of(SINGLE, tiny_tokenizer):
        assert len(practice.words) == len(set(practice.words)) == NEEDLES and len(practice.asked) == 1


def test_a_multi_query_window_asks_two_distinct_needles_in_one_question(tiny_tokenizer) -> None:
    seen = []
    for practice in _practice_of(MULTI_QUERY, tiny_tokenizer, count=30):
        assert practice.kind == MULTI_QUERY
        assert len(practice.words) == len(set(practice.words)) == NEEDLES
        first, second = practice.asked
        assert first != second and practice.words[first] != practice.words[second]
        seen.append(practice.asked)
    assert len(set(seen)) > 4  # the pair and its order are drawn, not always the same needles
    assert any(a > b for a, b in seen) and any(a < b for a, b in seen)


def test_a_multi_value_window_asks_every_code_of_one_word_in_window_order(tiny_tokenizer) -> None:
    values, slots = Counter(), Counter()
    for practice in _practice_of(MULTI_VALUE, tiny_tokenizer, count=40):
        word = practice.words[practice.asked[0]]
        assert len(practice.asked) in VALUES and len(practice.words) == len(practice.asked) + NEEDLES - 1
        # the answer: all of the word's needles, in the order they sit in the window
        assert [i for i, w in enumerate(practice.words) if w == word] == list(practice.asked)
        assert list(practice.needle_starts) == sorted(practice.needle_starts)
        others = [w for w in practice.words if w != word]
        assert len(others) == len(set(others)) == NEEDLES - 1
        assert len(set(practice.numbers)) == len(practice.numbers)  # every code tells its needle apart
        values[len(practice.asked)] += 1
        slots.update(practice.asked)
    assert set(values) == set(VALUES)
    assert len(slots) == NEEDLES - 1 + max(VALUES)  # the asked word's needles sit at any depth


def test_a_window_draws_its_kind_uniformly_and_deterministically(tiny_tokenizer) -> None:
    every = NeedlePlan(LENGTH, 0.5, seed=0, tokenizer=tiny_tokenizer, kinds=KINDS)
    drawn = Counter(every.kind(k) for k in range(3000))
    assert all(abs(drawn[kind] / 3000 - 1 / 3) < 0.04 for kind in KINDS), drawn
    two = NeedlePlan(LENGTH, 0.5, seed=0, tokenizer=tiny_tokenizer, kinds=(MULTI_QUERY, MULTI_VALUE))
    assert abs(Counter(two.kind(k) for k in range(2000))[MULTI_QUERY] / 2000 - 0.5) < 0.04
    # the kind comes from a stream of its own: independent of whether a window carries practice
    assert abs(np.mean([every.carries(k) for k in range(3000) if every.kind(k) == MULTI_VALUE]) - 0.5) < 0.06
    windows = _windows(30)
    same = NeedlePlan(LENGTH, 0.5, seed=0, tokenizer=tiny_tokenizer, kinds=KINDS)
    other = NeedlePlan(LENGTH, 0.5, seed=1, tokenizer=tiny_tokenizer, kinds=KINDS)
    first, mask = every.batch(windows, 40)
    again, mask_again = same.batch(windows, 40)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(mask, mask_again)
    assert [every.kind(k) for k in range(100)] != [other.kind(k) for k in range(100)]
    held = [every.insert(windows[k], k)[1] for k in range(30) if every.carries(k)]
    assert {p.kind for p in held} == set(KINDS)
    for k in range(30):
        if every.carries(k):
            check_practice_window(every, windows[k], k, tiny_tokenizer)
    # a single window is the same whichever kinds are listed beside single
    alone = dataclasses.replace(every, kinds=(SINGLE,))
    singles = [k for k in range(30) if every.carries(k) and every.kind(k) == SINGLE]
    assert singles
    for k in singles:
        np.testing.assert_array_equal(every.insert(windows[k], k)[0], alone.insert(windows[k], k)[0])


def test_the_shortest_length_covers_the_longest_kind_listed(tiny_tokenizer) -> None:
    shortest = {kind: NeedlePlan(LENGTH, 0.5, tokenizer=tiny_tokenizer, kinds=(kind,)).shortest_length()
                for kind in KINDS}  # fmt: skip
    assert shortest[SINGLE] < shortest[MULTI_QUERY] < shortest[MULTI_VALUE] <= LENGTH
    both = NeedlePlan(LENGTH, 0.5, tokenizer=tiny_tokenizer, kinds=(SINGLE, MULTI_VALUE))
    assert both.shortest_length() == shortest[MULTI_VALUE]
    # at that length every kind's windows still keep their text
    tight = dataclasses.replace(both, length=shortest[MULTI_VALUE], kinds=KINDS)
    windows = _windows(60, length=tight.length, seed=2)
    for k in range(60):
        if tight.carries(k):
            check_practice_window(tight, windows[k], k, tiny_tokenizer)
    with pytest.raises(RopextError, match=f"at least {shortest[MULTI_VALUE]} tokens .*--practice single,multi-value"):
        dataclasses.replace(both, length=shortest[MULTI_VALUE] - 1).check_length()


def test_practice_kinds_parse_to_known_kinds_in_one_order() -> None:
    assert parse_practice("single") == (SINGLE,)
    assert parse_practice(" Multi-Value,single, multi-value ") == (SINGLE, MULTI_VALUE)
    assert parse_practice("multi-value,multi-query,single") == KINDS
    for text, named in (("multi-key", "unknown practice kind 'multi-key'"), (" , ", "no practice kind")):
        with pytest.raises(RopextError, match=f"--practice: {named}; use a comma list of single, multi-query, "):
            parse_practice(text)


@pytest.fixture()
def factors(tiny_model: Path, tmp_path: Path) -> Path:
    _, layout = load_layout(str(tiny_model))
    path = tmp_path / "yarn-1k.yaml"
    METHODS.get("yarn")(layout, TARGET).save(path)
    return path


def _finetune(model: Path, corpus: Path, factors: Path, out: Path, *extra: str) -> list:
    return [
        "finetune", "--model", model, "--factors", factors, "--corpus", corpus, "--train-length", str(LENGTH),
        "--steps", "2", "--out", out, *extra,
    ]  # fmt: skip


BAD = {
    "unknown kind": (["--practice", "single,multi-key"],
                     ("--practice: unknown practice kind 'multi-key'", "single, multi-query, multi-value")),
    "kinds without practice": (
        ["--practice", "multi-query", "--needle-share", "0"],
        ("--practice multi-query has no effect", "(--needle-share 0)", "--needle-share above 0"),
    ),
    "kinds where auto turns practice off": (
        ["--practice", "multi-value", "--train-length", "128"],
        ("--practice multi-value has no effect", "--needle-share auto is 0: --train-length 128 is below the "),
    ),
    "train length too short for a kind": (
        ["--practice", "single,multi-value", "--needle-share", "0.2", "--train-length", "200"],
        ("--needle-share needs --train-length of at least", "--practice single,multi-value", "got 200"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_practice_options_are_one_clean_line(
    case: str, tiny_model: Path, corpus_files: CorpusFiles, factors: Path, tmp_path: Path
) -> None:
    extra, fragments = BAD[case]
    out = tmp_path / "out"
    assert_clean_error(run_cli(*_finetune(tiny_model, corpus_files.folder, factors, out, *extra)), *fragments)
    assert not out.exists()


def test_an_unknown_kind_is_refused_before_any_model_loads(tmp_path: Path, factors: Path) -> None:
    # no such model: the kind is refused first
    result = run_cli("finetune", "--model", tmp_path / "missing", "--factors", factors, "--practice", "multi")
    assert_clean_error(result, "unknown practice kind 'multi'")


def test_resume_refuses_other_practice_kinds(
    tiny_model: Path, corpus_files: CorpusFiles, factors: Path, tmp_path: Path
) -> None:
    from ropext.data.corpus import open_corpus

    out = tmp_path / "out"
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-1")
    settings = {
        "scaling": {k: v for k, v in RopeScaling.load(factors).to_dict().items() if k != "provenance"},
        "corpus_fingerprint": open_corpus(str(corpus_files.folder)).fingerprint,
        "train_length": LENGTH,
        "seed": 0,
        "skip_docs": 0,
        "skip_length": 1,
        "position_skip": TARGET,
        "needle_share": 0.5,
    }

    def checkpoint(**more: object) -> None:
        sidecar = {"state": {"step": 1, "samples": 1, "tokens": LENGTH, "seconds": 1.0}, "world_size": 1,
                   "settings": json.loads(json.dumps({**settings, **more}))}  # fmt: skip
        (out / "checkpoints" / "step-1" / "ropext.json").write_text(json.dumps(sidecar))

    command = _finetune(tiny_model, corpus_files.folder, factors, out, "--resume", "--needle-share", "0.5")
    checkpoint(practice=[MULTI_QUERY])
    assert_clean_error(run_cli(*command), "practice multi-query, not single", "resume with --practice multi-query")
    assert_clean_error(
        run_cli(*command, "--practice", "multi-value,multi-query"),
        "practice multi-query, not multi-query,multi-value",
        "--practice multi-query",
    )
    checkpoint()  # trained before --practice, or with single: resumes only as single
    assert_clean_error(run_cli(*command, "--practice", "single,multi-query"), "practice single, not single,multi-query")


def test_training_with_every_kind_records_the_kinds(
    tiny_model: Path, corpus_files: CorpusFiles, factors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "out"
    extra = ("--needle-share", "0.9", "--practice", "multi-value,single,multi-query", "--batch-tokens", "2048")
    # a process of its own: training joins a torch.distributed process group, which would outlive the test here
    result = run_cli_subprocess(*_finetune(tiny_model, corpus_files.folder, factors, out, *extra))
    assert_ok(result)
    assert "retrieval practice (single, multi-query, multi-value) in 90% of windows" in result.stdout + result.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    plan = NeedlePlan(LENGTH, 0.9, kinds=KINDS)
    for step, record in enumerate(metrics):
        drawn = Counter(plan.kind(k) for k in range(4 * step, 4 * step + 4) if plan.carries(k))
        assert record["needle_kinds"] == {kind: drawn[kind] for kind in KINDS}
        assert sum(record["needle_kinds"].values()) == record["needle_windows"] > 0
    finetuned = RopeScaling.load(out / "rope_scaling.yaml").provenance["finetuned"]
    assert finetuned["needle_share"] == 0.9 and finetuned["practice"] == list(KINDS)
