"""`ropext eval ppl` and `ropext eval passkey` on the tiny Llama, checked against transformers' own loss."""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import CorpusFiles, assert_clean_error, assert_close, assert_ok, read_json, run_cli

from ropext.data.tokenized import encode
from ropext.evaluate.passkey import FILLER, NEEDLE, QUESTION, TASK_INTRO, build_prompt

LENGTHS = (128, 256)
MAX_DOCS = 2
STRIDE = 64


def _ppl(model: Path, corpus: Path, lengths: str, json_out: Path, *extra: str) -> dict[str, Any]:
    result = run_cli(
        "eval", "ppl", "--model", model, "--corpus", corpus, "--lengths", lengths,
        "--max-docs", str(MAX_DOCS), "--json", json_out, "--device", "cpu", *extra,
    )  # fmt: skip
    assert_ok(result)
    return read_json(json_out)


@pytest.fixture(scope="module")
def reference(tiny_model: Path):  # -> (tokenizer, model) loaded by transformers directly
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return tokenizer, model


def _documents(tokenizer: Any, texts: tuple[str, ...], min_tokens: int) -> list[list[int]]:
    """The first MAX_DOCS documents with at least ``min_tokens`` tokens (backend encoding, no special tokens)."""
    ids = [tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids for text in texts]
    return [doc for doc in ids if len(doc) >= min_tokens][:MAX_DOCS]


@torch.no_grad()
def _summed_loss(model: Any, ids: list[int], first_target: int = 1) -> tuple[float, int]:
    """transformers' mean loss times its count: the NLL of ``ids[first_target:]`` summed, and the count."""
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[0, :first_target] = -100  # transformers' loss ignores these targets
    count = len(ids) - max(first_target, 1)
    return model(input_ids=input_ids, labels=labels).loss.item() * count, count


def _sliding_reference(model: Any, doc: list[int], length: int, stride: int) -> tuple[float, int]:
    """Full windows of ``length`` every ``stride`` tokens (the last one ending at the document's end); each
    target scored once, by the first window predicting it.

    Returns the summed NLL and the number of targets scored.
    """
    total, count, scored_until = 0.0, 0, 0  # the targets at positions 1..scored_until are done
    for start in range(0, len(doc), stride):
        stop = min(start + length, len(doc))
        begin = max(0, stop - length)
        window_total, window_count = _summed_loss(model, doc[begin:stop], first_target=scored_until + 1 - begin)
        total, count, scored_until = total + window_total, count + window_count, stop - 1
        if stop == len(doc):
            break
    return total, count


@pytest.fixture(scope="module")
def baseline(tiny_model: Path, corpus_files: CorpusFiles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    json_out = tmp_path_factory.mktemp("ppl") / "baseline.json"
    return _ppl(tiny_model, corpus_files.folder, ",".join(map(str, LENGTHS)), json_out)


def test_ppl_json_has_one_result_per_length(baseline: dict[str, Any], tiny_model: Path) -> None:
    assert baseline["task"] == "ppl"
    assert baseline["model"] == str(tiny_model)
    assert baseline["scaling"] is None
    assert baseline["device"] == "cpu"
    assert baseline["dtype"] == "float32"
    assert list(baseline["results"]) == ["128", "256"]
    for length in LENGTHS:
        result = baseline["results"][str(length)]
        assert result["docs"] == MAX_DOCS
        assert result["tokens"] == MAX_DOCS * (length - 1)
        assert math.isfinite(result["ppl"]) and result["ppl"] > 1


def test_ppl_equals_transformers_own_loss(baseline: dict[str, Any], reference, corpus_files: CorpusFiles) -> None:
    tokenizer, model = reference
    documents = _documents(tokenizer, corpus_files.texts, max(LENGTHS))
    assert len(documents) == MAX_DOCS
    assert len(encode(tokenizer, corpus_files.texts[0])) < max(LENGTHS)  # so the short first document is skipped
    for length in LENGTHS:
        total = sum(_summed_loss(model, doc[:length])[0] for doc in documents)
        expected = math.exp(total / (MAX_DOCS * (length - 1)))
        assert_close(baseline["results"][str(length)]["ppl"], expected)


def test_ppl_with_a_method_records_it_and_changes_ppl(
    baseline: dict[str, Any], tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    document = _ppl(tiny_model, corpus_files.folder, "256", tmp_path / "yarn.json", "--method", "yarn", "-t", "1k")
    assert document["scaling"]["method"] == "yarn"
    assert document["scaling"]["max_position_embeddings"] == 1024
    scaled, original = document["results"]["256"]["ppl"], baseline["results"]["256"]["ppl"]
    assert abs(scaled / original - 1) > 1e-3  # far beyond the 1e-4 agreement with transformers checked above
    assert_close(scaled, original, rel=0.5)  # but the same model


def test_sliding_mode_scores_every_token_after_the_first_once(
    tiny_model: Path, corpus_files: CorpusFiles, reference, tmp_path: Path
) -> None:
    document = _ppl(
        tiny_model, corpus_files.folder, "128,256", tmp_path / "sliding.json",
        "--mode", "sliding", "--stride", str(STRIDE),
    )  # fmt: skip
    tokenizer, model = reference
    documents = _documents(tokenizer, corpus_files.texts, max(LENGTHS))
    for length in LENGTHS:
        result = document["results"][str(length)]
        assert result["tokens"] == sum(len(doc) - 1 for doc in documents)
        assert result["windows"] > MAX_DOCS
        sums = [_sliding_reference(model, doc, length, STRIDE) for doc in documents]
        assert [scored for _, scored in sums] == [len(doc) - 1 for doc in documents]
        assert_close(result["ppl"], math.exp(sum(total for total, _ in sums) / result["tokens"]))


def test_rerun_with_more_lengths_keeps_finished_results(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    json_out = tmp_path / "resume.json"
    first = _ppl(tiny_model, corpus_files.folder, "128", json_out)
    second = _ppl(tiny_model, corpus_files.folder, "128,256", json_out)
    assert second["results"]["128"] == first["results"]["128"]  # "seconds" too: it was not recomputed
    assert list(second["results"]) == ["128", "256"]
    assert second["options"]["lengths"] == [128, 256]


def test_result_file_of_another_run_is_refused_and_kept(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    json_out = tmp_path / "other-run.json"
    _ppl(tiny_model, corpus_files.folder, "128", json_out)
    before = json_out.read_bytes()
    result = run_cli(
        "eval", "ppl", "--model", tiny_model, "--corpus", corpus_files.folder, "--lengths", "128",
        "--max-docs", str(MAX_DOCS), "--json", json_out, "--device", "cpu", "--method", "yarn", "-t", "1k",
    )  # fmt: skip
    assert_clean_error(result, "different run")
    assert json_out.read_bytes() == before


# ---------------------------------------------------------------- passkey


def _passkey(model: Path, lengths: str, json_out: Path) -> dict[str, Any]:
    result = run_cli(
        "eval", "passkey", "--model", model, "--lengths", lengths, "--depths", "0,1", "--trials", "2",
        "--json", json_out, "--device", "cpu",
    )  # fmt: skip
    assert_ok(result)
    return read_json(json_out)


def test_passkey_cli_reports_accuracy_per_depth(tiny_model: Path, tmp_path: Path) -> None:
    document = _passkey(tiny_model, "128", tmp_path / "passkey.json")
    assert document["task"] == "passkey"
    outcome = document["results"]["128"]
    assert 0.0 <= outcome["accuracy"] <= 1.0
    assert set(outcome["depths"]) == {"0", "1"}
    samples = outcome["samples"]
    assert len(samples) == 2 * 2
    assert all(0 < sample["prompt_tokens"] <= 128 for sample in samples)
    assert outcome["accuracy"] == pytest.approx(sum(sample["correct"] for sample in samples) / len(samples))
    assert len({sample["key"] for sample in samples}) > 1  # every trial hides a new key


@pytest.mark.parametrize("length", [128, 200, 256])
@pytest.mark.parametrize("depth", [0.0, 1.0])
def test_passkey_prompt_fits_and_hides_the_key_at_its_depth(reference, length: int, depth: float) -> None:
    tokenizer, _ = reference
    key = 48213
    prompt = build_prompt(tokenizer, length, depth, key)
    filler_tokens = len(encode(tokenizer, FILLER))
    assert length - filler_tokens <= len(prompt.ids) <= length
    assert prompt.key == key
    text = tokenizer.decode(prompt.ids)
    needle = NEEDLE.format(key=key)
    assert text.startswith(TASK_INTRO) and text.endswith(QUESTION)
    assert text.count(needle) == 1
    if depth == 0.0:
        assert text.startswith(TASK_INTRO + needle + FILLER)
    else:
        assert text.endswith(FILLER + needle + QUESTION)


def test_passkey_rerun_with_more_lengths_resumes(tiny_model: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "passkey-resume.json"
    first = _passkey(tiny_model, "128", json_out)
    second = _passkey(tiny_model, "128,200", json_out)  # the same run, extended: not "a different run"
    assert second["results"]["128"] == first["results"]["128"]
    assert list(second["results"]) == ["128", "200"]
    assert all(sample["prompt_tokens"] <= 200 for sample in second["results"]["200"]["samples"])


# ---------------------------------------------------------------- progress, interrupts, busy result files


def _popen(*args: str | Path) -> subprocess.Popen[str]:
    """``python -m ropext ARGS`` with stdout and stderr into one pipe (not a terminal, as in a CI log)."""
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "FORCE_COLOR")}
    return subprocess.Popen(
        [sys.executable, "-m", "ropext", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "COLUMNS": "200"},
    )


def _passkey_args(model: Path, json_out: Path, lengths: str = "128,256", trials: str = "6") -> list[str | Path]:
    return [
        "eval", "passkey", "--model", model, "--lengths", lengths, "--depths", "0,0.5,1", "--trials", trials,
        "--json", json_out, "--device", "cpu",
    ]  # fmt: skip


def test_a_log_gets_plain_progress_lines_while_the_evaluation_runs(tiny_model: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "progress.json"
    process = _popen(*_passkey_args(tiny_model, json_out))
    lines, while_running = [], []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("passkey"):
            while_running.append(json_out.exists() and len(read_json(json_out)["results"]) == 2)
    assert process.wait(timeout=300) == 0, "\n".join(lines)
    output = "\n".join(lines)
    assert "\x1b" not in output, output  # no colour or cursor codes in a log
    progress = [line for line in lines if line.startswith("passkey") and "/36 (" in line]
    counts = [int(line.split(": ")[1].split("/")[0]) for line in progress]
    # Lines from the start through the middle to the end, each before the final table, and most of them
    # printed while results were still missing from the file.
    assert counts[0] == 0 and counts[-1] == 36 and any(0 < count < 36 for count in counts), output
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if "accuracy" in line), output
    assert while_running.count(False) >= 2, output
    assert "prompts/s" in progress[-1] or "s/prompt" in progress[-1], output


def test_interrupted_eval_says_how_to_continue_and_resumes_identically(tiny_model: Path, tmp_path: Path) -> None:
    json_out, straight = tmp_path / "interrupted.json", tmp_path / "straight.json"
    args = _passkey_args(tiny_model, json_out, lengths="128,256,512", trials="8")
    process = _popen(*args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if json_out.exists() and read_json(json_out)["results"]:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output, output
    saved = read_json(json_out)["results"]
    assert 0 < len(saved) < 3, output
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last == (
        f"error: interrupted; {len(saved)} finished results are saved in {json_out}; to continue, rerun: "
        + shlex.join(["ropext", *map(str, args)])
    ), output
    assert_ok(run_cli(*args))
    assert_ok(run_cli(*_passkey_args(tiny_model, straight, lengths="128,256,512", trials="8")))
    resumed, uninterrupted = read_json(json_out)["results"], read_json(straight)["results"]
    for length in ("128", "256", "512"):
        for name in ("accuracy", "depths", "samples"):
            assert resumed[length][name] == uninterrupted[length][name], (length, name)


def test_a_result_file_in_use_by_another_run_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    """Two runs with different scalings and one --json: the second fails at once; the first's results stay."""
    from ropext.locking import FileLock

    json_out = tmp_path / "busy.json"
    with FileLock(json_out):  # another run holds it
        result = run_cli(
            *_passkey_args(tiny_model, json_out, lengths="128", trials="1"), "--method", "yarn", "-t", "1k"
        )
        assert_clean_error(result, f"{json_out} is in use by another run (pid {os.getpid()})")
    assert not json_out.exists()
    assert_ok(run_cli(*_passkey_args(tiny_model, json_out, lengths="128", trials="1")))
    assert not json_out.with_name("busy.json.lock").exists()


def test_passkey_by_default_hides_each_key_at_its_own_depth(tiny_model: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "passkey.json"
    assert_ok(
        run_cli("eval", "passkey", "--model", tiny_model, "--lengths", "128", "--json", json_out, "--device", "cpu")
    )
    outcome = read_json(json_out)["results"]["128"]
    depths = [sample["depth"] for sample in outcome["samples"]]
    assert len(depths) == 10 and len(set(depths)) == 10
    assert all(i / 10 <= d <= (i + 1) / 10 for i, d in enumerate(depths))
    assert set(outcome["depths"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    assert outcome["accuracy"] == pytest.approx(sum(s["correct"] for s in outcome["samples"]) / 10)
