"""The bad inputs of a new user's trial (issue 10, defects 1-7), each through the CLI on the tiny Llama: one
``error: ...`` line that names the problem, status 2, no traceback, and no finished work lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from integration_support import (
    CorpusFiles,
    assert_clean_error,
    assert_ok,
    read_json,
    run_cli,
    run_cli_subprocess,
)

from ropext.methods import METHODS
from ropext.model.loading import load_layout

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FINETUNE_REST = ("--corpus", "python-stdlib", "--train-length", "128", "--steps", "1")


@pytest.fixture(scope="module")
def factors(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YaRN to 1k for the tiny model."""
    _, layout = load_layout(str(tiny_model))
    path = tmp_path_factory.mktemp("new-user") / "yarn-1k.yaml"
    METHODS.get("yarn")(layout, 1024).save(path)
    return path


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A regular file: nothing can be created under it, whoever runs the tests (root included)."""
    path = tmp_path / "plain-file"
    path.write_text("not a folder")
    return path


def _ppl(model: Path, corpus: Path | str, *extra: str | Path, lengths: str = "128") -> list[str | Path]:
    return [
        "eval", "ppl", "--model", model, "--corpus", corpus, "--lengths", lengths, "--max-docs", "1",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def _with_factor(source: Path, folder: Path, value: str) -> Path:
    """``source`` with its first factor replaced by ``value`` as written in YAML."""
    lines = source.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("factors: ["))
    lines[index] = "factors: [" + value + ", " + lines[index].split(", ", 1)[1]
    path = folder / f"factor-{value}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------- 1. unwritable outputs


def test_eval_json_under_a_file_fails_before_the_model_loads(
    tiny_model: Path, corpus_files: CorpusFiles, blocked: Path
) -> None:
    result = run_cli(*_ppl(tiny_model, corpus_files.folder, "--json", blocked / "p.json", lengths="128,256"))
    assert_clean_error(result, f"--json {blocked / 'p.json'}", "is a file, not a folder")
    assert blocked.read_text() == "not a folder"


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders; the regular-file cases cover it")
def test_eval_json_in_a_read_only_folder(tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run_cli(*_ppl(tiny_model, corpus_files.folder, "--json", locked / "p.json"))
        assert_clean_error(result, str(locked), "not writable")
    finally:
        locked.chmod(0o700)


def test_json_naming_a_folder(tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    result = run_cli(*_ppl(tiny_model, corpus_files.folder, "--json", tmp_path))
    assert_clean_error(result, f"--json {tmp_path} is a folder")


def test_search_out_naming_an_existing_folder(config_only_model: Path, tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("x")
    result = run_cli("search", "--model", config_only_model, "--method", "yarn", "-t", "1k", "--out", tmp_path)
    assert_clean_error(result, f"--out {tmp_path} is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_searcher_out_under_a_file_fails_before_any_evaluation(
    tiny_model: Path, corpus_files: CorpusFiles, blocked: Path
) -> None:
    out = blocked / "dcis.yaml"
    command = ["search", "--model", tiny_model, "--method", "dcis", "-t", "512", "--corpus", corpus_files.folder]
    assert_clean_error(run_cli(*command, "--out", out, "--budget", "2"), f"--out {out}", "is a file")


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (lambda m, f, o: ["export", "--model", m, "--factors", f, "--out", o], "--out"),
        (lambda m, f, o: ["inspect", f, "--plot", o / "f.png"], "--plot"),
        (lambda m, f, o: ["report", f, "--out", o], "--out"),
        (lambda m, f, o: ["eval", "passkey", "--model", m, "--lengths", "512", "--json", o / "p.json"], "--json"),
        (lambda m, f, o: ["eval", "ruler", "--model", m, "--lengths", "512", "--json", o / "r.json"], "--json"),
        (
            lambda m, f, o: ["eval", "run", "--model", m, "--tasks", "passkey", "--lengths", "512", "--json-dir", o],
            "--json-dir",
        ),
        (
            lambda m, f, o: ["finetune", "--model", m, "--factors", f, *FINETUNE_REST, "--out", o],
            "--out",
        ),
    ],
    ids=["export", "inspect-plot", "report", "passkey", "ruler", "eval-run", "finetune"],
)
def test_every_output_is_checked_first(command, option: str, tiny_model: Path, factors: Path, blocked: Path) -> None:
    out = blocked / "sub"
    result = run_cli(*command(tiny_model, factors, out))
    assert_clean_error(result, option, str(blocked), "is a file")


# ---------------------------------------------------------------------------- 2. search --from X --out X


def test_search_refuses_to_overwrite_its_from_file(
    tiny_model: Path, corpus_files: CorpusFiles, factors: Path, tmp_path: Path
) -> None:
    start = tmp_path / "start.yaml"
    start.write_bytes(factors.read_bytes())
    same = tmp_path / "sub" / ".." / "start.yaml"  # another spelling of the same file
    command = ["search", "--model", tiny_model, "--method", "dcis", "-t", "2k", "--corpus", corpus_files.folder]
    result = run_cli(*command, "--from", start, "--out", same, "--budget", "2")
    assert_clean_error(result, "is the --from file", "start-extended.yaml")
    assert start.read_bytes() == factors.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["start.yaml"]  # no journal either


# ---------------------------------------------------------------------------- 3. factor bounds, non-finite results


def test_tiny_factor_is_refused_by_eval_and_export(
    tiny_model: Path, corpus_files: CorpusFiles, factors: Path, tmp_path: Path
) -> None:
    tiny = _with_factor(factors, tmp_path, "1.0e-300")
    json_out = tmp_path / "p.json"
    result = run_cli(*_ppl(tiny_model, corpus_files.folder, "--factors", tiny, "--json", json_out))
    assert_clean_error(result, "factors[0] is 1e-300", "[0.001, 1e+06]")
    assert not json_out.exists()
    result = run_cli("export", "--model", tiny_model, "--factors", tiny, "--out", tmp_path / "exported")
    assert_clean_error(result, "factors[0] is 1e-300")
    assert not (tmp_path / "exported").exists()


def test_huge_factor_is_refused_by_inspect(factors: Path, tmp_path: Path) -> None:
    assert_clean_error(run_cli("inspect", _with_factor(factors, tmp_path, "1.0e+308")), "factors[0] is 1e+308")


def test_non_finite_perplexity_is_an_error_and_earlier_lengths_are_kept(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ropext.evaluate.ppl as ppl

    real = ppl.summed_nll

    def overflowing_at_256(model, ids, score_from, chunk_tokens):
        total, count = real(model, ids, score_from, chunk_tokens)
        return (total * float("nan") if ids.shape[1] == 256 else total), count

    monkeypatch.setattr(ppl, "summed_nll", overflowing_at_256)
    json_out = tmp_path / "p.json"
    result = run_cli(*_ppl(tiny_model, corpus_files.folder, "--json", json_out, lengths="128,256"))
    assert_clean_error(result, "perplexity at length 256", "not finite", "kept")
    saved = read_json(json_out)["results"]
    assert list(saved) == ["128"]
    assert saved["128"]["ppl"] > 1
    assert "NaN" not in json_out.read_text()


# ---------------------------------------------------------------------------- 4. corpus files


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("empty.jsonl", b"", ["corpus file", "empty.jsonl is empty"]),
        ("numbers.jsonl", b'{"text": 12345}\n', ["record 1", "'text' of type int (12345)", "not a string"]),
        (
            "broken.jsonl",
            b'{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n',
            ["broken.jsonl, line 3: not valid JSON"],
        ),
        ("binary.txt", b"header \xff\xfe\x00\x89PNG", ["binary.txt is not UTF-8 text", "byte 0xff at offset 7"]),
    ],
    ids=["empty-jsonl", "number-text", "bad-json-line", "binary-txt"],
)
def test_unreadable_corpus_files(
    name: str, content: bytes, fragments: list[str], tiny_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    json_out = tmp_path / "p.json"
    assert_clean_error(run_cli(*_ppl(tiny_model, path, "--json", json_out)), *fragments)
    assert not json_out.exists()


def test_model_folder_without_tokenizer(tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_model / name).read_bytes())
    result = run_cli(*_ppl(folder, corpus_files.folder))
    assert_clean_error(result, f"model folder {folder} has no tokenizer", "tokenizer.json", "copy the tokenizer")


# ---------------------------------------------------------------------------- 5. devices


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize(
    ("device", "fragment"),
    [("cuda", "no CUDA GPU is visible"), ("cuda:1", "no CUDA GPU is visible"), ("tpu", "'tpu' is not a device")],
)
@pytest.mark.parametrize("command", ["ppl", "passkey", "export", "search"])
def test_unusable_device(
    device: str, fragment: str, command: str, no_gpu: None, tiny_model: Path, factors: Path, tmp_path: Path
) -> None:
    arguments: list[str | Path] = {
        "ppl": ["eval", "ppl", "--model", tiny_model, "--corpus", "python-stdlib", "--lengths", "128"],
        "passkey": ["eval", "passkey", "--model", tiny_model, "--lengths", "512"],
        "export": ["export", "--model", tiny_model, "--factors", factors, "--out", tmp_path / "e"],
        "search": ["search", "--model", tiny_model, "--method", "dcis", "-t", "1k", "--corpus", "python-stdlib"],
    }[command]
    option = "--devices" if command == "search" else "--device"
    if command == "search":
        arguments += ["--out", tmp_path / "s.yaml"]
    assert_clean_error(run_cli(*arguments, option, device), option, fragment)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- 6. binary YAML


@pytest.mark.parametrize("command", ["inspect", "eval"])
def test_binary_file_as_scaling_yaml(command: str, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    binary = tmp_path / "factors.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00")
    arguments = ["inspect", binary] if command == "inspect" else _ppl(tiny_model, corpus_files.folder, "-f", binary)
    assert_clean_error(run_cli(*arguments), "factors.yaml is not a text file (not UTF-8)")


# ---------------------------------------------------------------------------- 7. lengths no memory can hold


def test_passkey_length_beyond_any_memory_is_one_line(tiny_model: Path) -> None:
    """The issue's command, as typed, in a fresh interpreter."""
    result = run_cli_subprocess("eval", "passkey", "--model", tiny_model, "--lengths", "10000000000")
    assert_clean_error(result, "--lengths 10000000000", "needs at least", "TiB", "fit, choose shorter ones")


@pytest.mark.parametrize("command", ["ppl", "ruler", "run", "search"])
def test_lengths_beyond_any_memory(command: str, tiny_model: Path, tmp_path: Path) -> None:
    huge = "1000000000"
    arguments: list[str | Path] = {
        "ppl": ["eval", "ppl", "--model", tiny_model, "--corpus", "python-stdlib", "--lengths", f"128,{huge}"],
        "ruler": ["eval", "ruler", "--model", tiny_model, "--lengths", huge, "--tasks", "niah_single_1"],
        "run": ["eval", "run", "--model", tiny_model, "--tasks", "passkey", "--lengths", huge],
        "search": ["search", "--model", tiny_model, "--method", "dcis", "-t", huge, "--corpus", "python-stdlib"],
    }[command]
    if command == "search":
        arguments += ["--out", tmp_path / "s.yaml", "--devices", "cpu"]
    else:
        arguments += ["--device", "cpu"]
    option = "--target-length" if command == "search" else "--lengths"
    assert_clean_error(run_cli(*arguments), option, huge)
    assert list(tmp_path.iterdir()) == []


def test_lengths_that_fit_still_run(tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    json_out = tmp_path / "p.json"
    assert_ok(run_cli(*_ppl(tiny_model, corpus_files.folder, "--json", json_out, lengths="128,1k")))
    assert sorted(json.loads(json_out.read_text())["results"]) == ["1024", "128"]
