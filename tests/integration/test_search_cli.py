"""`ropext search` with a perplexity-guided searcher on the tiny Llama: YAML, journal, resume, budget, bad input."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from integration_support import (
    HEAD_DIM,
    ORIGINAL_CONTEXT,
    ROPE_THETA,
    CliResult,
    CorpusFiles,
    assert_clean_error,
    assert_ok,
    run_cli,
)

from ropext.critical import untrained_turn_pairs
from ropext.scaling import RopeScaling

PAIRS = HEAD_DIM // 2
TARGET = "1k"
SAMPLES = "2"
DCIS_EVALUATIONS = 1 + 2 * (2 * PAIRS - 2)
"""DCIS with candidates=2 on 8 pairs: the start, then 2 candidates for each of 14 segments."""
PROVENANCE_KEYS = (
    "searcher",
    "params",
    "corpus",
    "samples",
    "evaluations",
    "seconds",
    "score",
    "seed",
    "model",
    "ropext_version",
)


@dataclass(frozen=True)
class Searched:
    out: Path
    journal: Path
    scaling: RopeScaling
    result: CliResult


def search_args(
    model: Path, corpus: Path, out: Path, *extra: str | Path, target: str = TARGET, samples: str = SAMPLES
) -> list[str | Path]:
    return [
        "search", "--model", model, "--method", "dcis", "-t", target, "--corpus", corpus,
        "--samples", samples, "--out", out, *extra,
    ]  # fmt: skip


def journal_of(out: Path) -> Path:
    return out.with_name(out.name + ".journal.jsonl")


def read_journal(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the evaluation records (complete lines only)."""
    lines = path.read_text().split("\n")[:-1]
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]


def assert_one_clean_error(result: CliResult, *fragments: str) -> None:
    assert_clean_error(result, *fragments)
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1, str(result)


@pytest.fixture(scope="module")
def dcis(tiny_model: Path, corpus_files: CorpusFiles, tmp_path_factory: pytest.TempPathFactory) -> Searched:
    out = tmp_path_factory.mktemp("dcis") / "f.yaml"
    # Without the critical floor, no candidate is clipped onto another, so the evaluation count is exact.
    result = run_cli(
        *search_args(tiny_model, corpus_files.folder, out, "--param", "candidates=2", "--no-critical-floor")
    )
    assert_ok(result)
    return Searched(out, journal_of(out), RopeScaling.load(out), result)


# --------------------------------------------------------------------------- a whole search


def test_search_writes_yaml_with_provenance(dcis: Searched, tiny_model: Path, corpus_files: CorpusFiles) -> None:
    scaling = dcis.scaling
    prov = scaling.provenance
    assert f"wrote {dcis.out}" in dcis.result.stdout
    assert scaling.method == "dcis"
    assert len(scaling.factors) == PAIRS and scaling.short_factors is None
    assert scaling.original_max_position_embeddings == ORIGINAL_CONTEXT
    assert scaling.max_position_embeddings == 1024
    for key in PROVENANCE_KEYS:
        assert key in prov, key
    assert prov["searcher"] == "dcis"
    assert prov["params"]["candidates"] == 2
    assert prov["corpus"] == str(corpus_files.folder)
    assert prov["samples"] == 2 and prov["seed"] == 0
    assert prov["model"] == str(tiny_model)
    assert prov["evaluations"] == DCIS_EVALUATIONS
    assert prov["stopped_by_budget"] is False
    assert prov["replayed_evaluations"] == 0
    assert prov["critical_floor"] is False
    assert math.isfinite(prov["score"]) and prov["score"] > 1
    # Factors within DCIS's default bounds [1, 1.25·s].
    assert all(1.0 <= x <= 1.25 * 4 for x in scaling.factors)


def test_journal_records_every_evaluation_once(dcis: Searched) -> None:
    header, records = read_journal(dcis.journal)
    lines = dcis.journal.read_text().splitlines()
    assert len(lines) == dcis.scaling.provenance["evaluations"] + 1
    assert header["format"] == "ropext-search-journal"
    assert header["search"]["seed"] == 0 and header["search"]["samples"] == 2
    keys = [record["key"] for record in records]
    assert len(set(keys)) == len(keys)
    # The winner is the journal's best entry.
    best = min(records, key=lambda r: r["score"])
    assert dcis.scaling.provenance["score"] == best["score"]
    assert list(dcis.scaling.factors) == best["factors"]


def test_rerun_replays_everything(dcis: Searched, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    out = tmp_path / "again.yaml"
    journal = tmp_path / "copied.journal.jsonl"
    journal.write_bytes(dcis.journal.read_bytes())
    result = run_cli(
        *search_args(
            tiny_model, corpus_files.folder, out, "--param", "candidates=2", "--no-critical-floor",
            "--journal", str(journal),
        )
    )  # fmt: skip
    assert_ok(result)
    again = RopeScaling.load(out)
    assert again.factors == dcis.scaling.factors
    assert again.provenance["replayed_evaluations"] == DCIS_EVALUATIONS
    assert again.provenance["evaluations"] == DCIS_EVALUATIONS
    assert journal.read_bytes() == dcis.journal.read_bytes()  # nothing new was evaluated


# --------------------------------------------------------------------------- kill and resume

RESUMABLE = ("--param", "candidates=4", "--seed", "3")
"""1 + 4·14 = 57 evaluations in 15 objective calls: long enough to be killed in the middle."""
RESUMABLE_SIZE = {"target": "512", "samples": "1"}
"""Half the target and one window: a quick search, yet seconds long."""
KILL_AFTER = 4


def wait_for_evaluations(process: subprocess.Popen[str], journal: Path, count: int, timeout: float) -> int:
    """Poll the journal until it holds ``count`` evaluations; returns how many it holds then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists():
            done = journal.read_text().count("\n") - 1
            if done >= count:
                return done
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"the search ended (exit {process.returncode}) before it could be killed:\n{stderr}")
        time.sleep(0.002)
    process.kill()
    pytest.fail(f"the journal {journal} did not reach {count} evaluations in {timeout} s")


def test_killed_search_resumes_to_the_uninterrupted_result(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    resumed_out, straight_out = tmp_path / "resumed.yaml", tmp_path / "straight.yaml"
    args = search_args(tiny_model, corpus_files.folder, resumed_out, *RESUMABLE, **RESUMABLE_SIZE)
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ropext", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_for_evaluations(process, journal_of(resumed_out), KILL_AFTER, timeout=120)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    _, interrupted = read_journal(journal_of(resumed_out))
    assert not resumed_out.exists()

    assert_ok(run_cli(*args))
    assert_ok(run_cli(*search_args(tiny_model, corpus_files.folder, straight_out, *RESUMABLE, **RESUMABLE_SIZE)))
    resumed, straight = RopeScaling.load(resumed_out), RopeScaling.load(straight_out)

    assert resumed.factors == straight.factors
    assert math.isclose(resumed.provenance["score"], straight.provenance["score"], rel_tol=1e-9)
    assert resumed.provenance["replayed_evaluations"] == len(interrupted) >= KILL_AFTER
    assert len(interrupted) < straight.provenance["evaluations"], "killed after the search was over"
    _, resumed_records = read_journal(journal_of(resumed_out))
    _, straight_records = read_journal(journal_of(straight_out))
    resumed_keys = [r["key"] for r in resumed_records]
    assert len(set(resumed_keys)) == len(resumed_keys)
    assert len(resumed_records) == len(straight_records) == resumed.provenance["evaluations"]
    assert set(resumed_keys) == {r["key"] for r in straight_records}
    # The killed run scored its candidates exactly as the uninterrupted one did.
    straight_scores = {r["key"]: r["score"] for r in straight_records}
    for record in interrupted:
        assert math.isclose(record["score"], straight_scores[record["key"]], rel_tol=1e-6)


def test_interrupted_search_says_how_to_continue(tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    out = tmp_path / "interrupted.yaml"
    args = search_args(tiny_model, corpus_files.folder, out, *RESUMABLE, **RESUMABLE_SIZE)
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ropext", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_for_evaluations(process, journal_of(out), KILL_AFTER, timeout=120)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    result = CliResult(process.returncode, stdout, stderr)
    assert result.code == 130 and "Traceback" not in result.stderr, str(result)
    _, saved = read_journal(journal_of(out))
    command = shlex.join(["ropext", *map(str, args)])
    assert result.last_stderr_line == (
        f"error: interrupted; {len(saved)} evaluations are saved in {journal_of(out)}; to continue, rerun the same "
        f"command: {command}"
    ), str(result)
    assert not out.exists()
    again = run_cli(*args)
    assert_ok(again)
    assert RopeScaling.load(out).provenance["replayed_evaluations"] == len(saved)


# --------------------------------------------------------------------------- budget


def test_budget_stops_after_that_many_evaluations(tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    out = tmp_path / "budget.yaml"
    result = run_cli(*search_args(tiny_model, corpus_files.folder, out, "--budget", "5"))
    assert_ok(result)
    scaling = RopeScaling.load(out)
    _, records = read_journal(journal_of(out))
    assert len(records) == 5
    assert scaling.provenance["evaluations"] == 5
    assert scaling.provenance["stopped_by_budget"] is True
    best = min(records, key=lambda r: r["score"])
    assert scaling.provenance["score"] == best["score"]
    assert list(scaling.factors) == best["factors"]
    assert "--budget" in result.stdout
    # stderr was not a terminal: plain progress lines, counting to the budget, not to DCIS's own 29.
    assert "\x1b" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("dcis search: ")]
    assert lines and all(" (" in line and line.split()[2].endswith("/5") for line in lines), result.stderr
    assert lines[-1].startswith("dcis search: 5/5 (100%)") and "best ppl " in lines[-1], lines


# --------------------------------------------------------------------------- critical floor


def test_searches_keep_untrained_turn_pairs_at_s_by_default(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    # theta 1e4, 8 pairs, L0 = 256: pairs 4–7 (wavelengths 628 … 19,869) never turn within L0.
    critical = untrained_turn_pairs(ROPE_THETA, HEAD_DIM, ORIGINAL_CONTEXT)
    assert critical == [4, 5, 6, 7]
    out = tmp_path / "floored.yaml"
    args = search_args(tiny_model, corpus_files.folder, out, "--budget", "40")
    assert_ok(run_cli(*[a if a != "dcis" else "longrope" for a in args]))
    scaling = RopeScaling.load(out)
    assert scaling.provenance["critical_floor"] is True
    _, records = read_journal(journal_of(out))
    assert len(records) == 40
    # Every candidate scored, not only the winner, kept them at s = 1024 / 256 or above.
    assert all(r["factors"][i] >= 4.0 for r in records for i in critical)
    assert any(r["factors"][0] < 4.0 for r in records)  # the other pairs were free to move
    result = run_cli("inspect", out, "--json")
    assert_ok(result)
    inspected = json.loads(result.stdout)
    assert inspected["untrained_turn_pairs"] == critical
    assert inspected["trained_angle_length"] >= 1024


# --------------------------------------------------------------------------- short factors


def test_short_search_keeps_the_long_factors(
    dcis: Searched, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "short.yaml"
    result = run_cli(
        *search_args(
            tiny_model, corpus_files.folder, out, "--from", str(dcis.out), "--short-length", "256",
            "--param", "candidates=2", "--param", "levels=2",
        )
    )  # fmt: skip
    assert_ok(result)
    scaling = RopeScaling.load(out)
    assert scaling.factors == dcis.scaling.factors
    assert scaling.attention_factor == dcis.scaling.attention_factor
    assert scaling.short_factors is not None and len(scaling.short_factors) == PAIRS
    assert all(1.0 <= x <= 1.25 for x in scaling.short_factors)  # s = 256 / 256 = 1
    assert scaling.provenance["short_search"] is True
    assert scaling.provenance["lengths"]["window"] == 256
    _, records = read_journal(journal_of(out))
    # At most 1 + 2·(2 + 4) with levels=2: increments that clip to the start (1.0) are the start, scored once.
    assert len(records) == scaling.provenance["evaluations"] <= 1 + 2 * (2 + 4)
    assert len({r["key"] for r in records}) == len(records)
    assert all(len(r["factors"]) == PAIRS for r in records)
    assert [1.0] * PAIRS in [r["factors"] for r in records]  # the starting point: no short rescaling


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("short-corpus")
    for i in range(3):
        (folder / f"doc_{i}.txt").write_text(f"Short document number {i}. " * 20)
    return folder


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("no corpus: python-stdlib, too few documents", "corpus python-stdlib has"),
        ("zero samples", "--samples"),
        ("missing --from", "does not exist"),
        ("short documents", "no document"),
        ("short length above the original", "must not exceed"),
        ("short length without --from", "give --from"),
        ("journal of another search", "different search"),
    ],
)
def test_bad_search_input_is_one_clean_error_line(
    case: str,
    fragment: str,
    dcis: Searched,
    tiny_model: Path,
    corpus_files: CorpusFiles,
    short_corpus: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.yaml"
    args = search_args(tiny_model, corpus_files.folder, out)
    journal = tmp_path / "other.journal.jsonl"
    journal.write_bytes(dcis.journal.read_bytes())
    changed: dict[str, list[str | Path]] = {
        "no corpus: python-stdlib, too few documents": [
            *(a for i, a in enumerate(args) if a != "--corpus" and args[i - 1] != "--corpus"),
            "--samples",
            "100000",
        ],
        "zero samples": [*args, "--samples", "0"],
        "missing --from": [*args, "--from", tmp_path / "missing.yaml"],
        "short documents": search_args(tiny_model, short_corpus, out),
        "short length above the original": [*args, "--short-length", str(2 * ORIGINAL_CONTEXT)],
        "short length without --from": [*args, "--short-length", str(ORIGINAL_CONTEXT // 2)],
        # The module's search had candidates=2 and seed 0; this one differs in the seed.
        "journal of another search": [*args, "--param", "candidates=2", "--seed", "1", "--journal", journal],
    }
    result = run_cli(*changed[case])
    assert_one_clean_error(result, fragment)
    assert not out.exists()
    assert journal.read_bytes() == dcis.journal.read_bytes()


def test_yaml_of_the_search_is_plain(dcis: Searched) -> None:
    """The file parses as YAML with the keys other commands read (guards `--from` and `eval --factors`)."""
    data = yaml.safe_load(dcis.out.read_text())
    assert data["method"] == "dcis" and data["short_factors"] is None
    assert data["provenance"]["searcher"] == "dcis"


def test_two_processes_under_torchrun_find_what_one_process_finds(
    dcis: Searched, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    # Two CPU processes (gloo) split every call's batches; rows are summed in the same order, so the
    # search takes the same steps and ends with bit-identical factors; only rank 0 writes the journal.
    out = tmp_path / "two.yaml"
    extra = ("--param", "candidates=2", "--no-critical-floor")
    args = [str(a) for a in search_args(tiny_model, corpus_files.folder, out, *extra)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ropext", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = RopeScaling.load(out)
    assert two.factors == dcis.scaling.factors
    assert two.provenance["score"] == dcis.scaling.provenance["score"]
    assert two.provenance["processes"] == 2
    _, records = read_journal(journal_of(out))
    assert len(records) == two.provenance["evaluations"] == len({r["key"] for r in records})
