"""`ropext finetune` on the tiny random Llama through DeepSpeed's CPU accelerator (ZeRO-3, gloo, one process).

Every training run is a `python -m ropext` subprocess: DeepSpeed's process group lives as long as its
process, and a subprocess is also how Ctrl-C is delivered for real. Two independent chains run side by
side (one per core): train 12 steps then resume to 16; and train until SIGINT then resume. Both run on the
defaults of the windows' options, which for YaRN to 1k at 128 tokens are PoSE positions to 1k, no short windows
(YaRN has no short factors) and no retrieval practice (128 tokens cannot hold it). Bad input and the pieces
(packing, chunked loss, config) are checked in this process.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from integration_support import CliResult, CorpusFiles, assert_clean_error, assert_ok, run_cli, run_cli_subprocess

from ropext.data.tokenized import TokenizedCorpus
from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.loading import load_layout
from ropext.scaling import RopeScaling

REPO = Path(__file__).resolve().parents[2]
TRAIN_LENGTH = 128
LR = "1e-3"
FIRST_STEPS, RESUMED_STEPS = 12, 16


@dataclass(frozen=True)
class Inputs:
    model: Path
    corpus: Path
    factors: Path
    other_head_dim: Path
    folder: Path


@pytest.fixture(scope="module")
def inputs(tiny_model: Path, corpus_files: CorpusFiles, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    folder = tmp_path_factory.mktemp("finetune")
    _, layout = load_layout(str(tiny_model))
    factors = folder / "yarn-1k.yaml"
    METHODS.get("yarn")(layout, 1024).save(factors)
    other = folder / "head-dim-32.yaml"  # 16 factors; the tiny model rotates 16 dims (8 factors)
    METHODS.get("yarn")(replace(layout, head_dim=32, rotary_dim=32), 1024).save(other)
    return Inputs(tiny_model, corpus_files.folder, factors, other, folder)


def _finetune(inputs: Inputs, out: Path, steps: int, *extra: str | Path) -> list[str | Path]:
    return [
        "finetune", "--model", inputs.model, "--factors", inputs.factors, "--corpus", inputs.corpus,
        "--train-length", str(TRAIN_LENGTH), "--steps", str(steps), "--lr", LR, "--out", out, *extra,
    ]  # fmt: skip


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@dataclass(frozen=True)
class Runs:
    out: Path
    """Trained 12 steps (checkpoint every 4), then resumed to 16."""
    first: CliResult
    first_metrics: list[dict]
    first_checkpoints: list[str]
    resumed: CliResult
    interrupted_out: Path
    interrupted: CliResult
    interrupted_step: int
    interrupted_latest: str
    interrupted_metrics: list[dict]
    after_interrupt: CliResult | None


def _train_then_resume(inputs: Inputs) -> tuple:
    out = inputs.folder / "run"
    first = run_cli_subprocess(*_finetune(inputs, out, FIRST_STEPS, "--save-every", "4"))
    assert_ok(first)
    metrics = _metrics(out)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    resumed = run_cli_subprocess(*_finetune(inputs, out, RESUMED_STEPS, "--save-every", "4", "--resume"))
    return out, first, metrics, checkpoints, resumed


def _interrupt_then_resume(inputs: Inputs) -> tuple:
    out = inputs.folder / "interrupted"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ropext", *map(str, _finetune(inputs, out, 100_000))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 240
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=240)
    interrupted = CliResult(process.returncode, stdout, stderr)
    if interrupted.code != 130:
        return out, interrupted, -1, "", [], None
    latest = _latest(out)
    step = json.loads((out / "checkpoints" / latest / "ropext.json").read_text())["state"]["step"]
    before = _metrics(out)
    after = run_cli_subprocess(*_finetune(inputs, out, step + 3, "--resume"))
    return out, interrupted, step, latest, before, after


def _latest(out: Path) -> str:
    return (out / "checkpoints" / "latest").read_text().strip()


@pytest.fixture(scope="module")
def runs(inputs: Inputs) -> Runs:
    # The CPU accelerator path, also where GPUs exist (they would change precision and the launcher).
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(max_workers=2) as pool:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        chain = pool.submit(_train_then_resume, inputs)
        interrupt = pool.submit(_interrupt_then_resume, inputs)
        out, first, metrics, checkpoints, resumed = chain.result()
        interrupted_out, interrupted, step, latest, before, after = interrupt.result()
    return Runs(out, first, metrics, checkpoints, resumed, interrupted_out, interrupted, step, latest, before, after)


# ---------------------------------------------------------------------------------------------- training runs
def test_loss_goes_down_and_metrics_are_complete(runs: Runs) -> None:
    metrics = runs.first_metrics
    assert [m["step"] for m in metrics] == list(range(1, FIRST_STEPS + 1))
    losses = [m["loss"] for m in metrics]
    assert np.mean(losses[:3]) > np.mean(losses[-3:]) + 0.2, losses
    assert all(m["lr"] == pytest.approx(float(LR)) for m in metrics)
    assert [m["tokens"] for m in metrics] == [TRAIN_LENGTH * m["step"] for m in metrics]
    assert all(m["tokens_per_s"] > 0 for m in metrics)
    seconds = [m["seconds"] for m in metrics]
    assert seconds == sorted(seconds) and seconds[0] > 0
    # DeepSpeed's CPU accelerator, not a silent fallback; and no tracebacks or errors on the way.
    assert "Setting accelerator to CPU" in runs.first.stdout + runs.first.stderr  # DeepSpeed logs to stdout
    assert "Traceback" not in runs.first.stderr
    assert f"wrote {runs.out}: {FIRST_STEPS} steps" in runs.first.stdout
    # The defaults, resolved once and said once before training.
    assert all(m["position_skip"] == 1024 and m["short_windows"] == 0 for m in metrics)
    assert not any("needle_windows" in m for m in metrics)
    said = [line for line in runs.first.stderr.splitlines() if line.startswith("training windows: ")]
    assert said == ["training windows: PoSE positions up to 1024, no retrieval practice"], runs.first.stderr


def test_a_log_gets_plain_progress_lines_during_training(runs: Runs) -> None:
    # stderr was a pipe, not a terminal: plain lines, no escape codes, counting steps up to the end.
    assert "\x1b" not in runs.first.stderr, str(runs.first)
    lines = [line for line in runs.first.stderr.splitlines() if line.startswith("finetune: ")]
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert counts[0] == 0 and counts[-1] == FIRST_STEPS and 0 < counts[1] < FIRST_STEPS, lines
    assert all(f"/{FIRST_STEPS} (" in line for line in lines), lines
    assert "s/step" in lines[-1] or "steps/s" in lines[-1], lines
    assert "loss " in lines[-1], lines


def test_checkpoints_every_n_steps_keep_the_newest(runs: Runs) -> None:
    # --save-every 4 saved steps 4, 8 and 12; --keep-checkpoints 1 (default) pruned the older two.
    assert runs.first_checkpoints == ["step-12"]
    saved = json.loads((runs.out / "checkpoints" / _latest(runs.out) / "ropext.json").read_text())
    assert saved["state"]["step"] == RESUMED_STEPS
    assert saved["state"]["samples"] == RESUMED_STEPS  # one window per step: the data position


def test_resume_continues_from_the_checkpoint(runs: Runs) -> None:
    assert_ok(runs.resumed)
    assert f"{RESUMED_STEPS} steps (resumed at step {FIRST_STEPS})" in runs.resumed.stdout
    metrics = _metrics(runs.out)
    assert [m["step"] for m in metrics] == list(range(1, RESUMED_STEPS + 1))
    assert metrics[:FIRST_STEPS] == runs.first_metrics
    assert metrics[FIRST_STEPS]["tokens"] == (FIRST_STEPS + 1) * TRAIN_LENGTH
    assert metrics[FIRST_STEPS]["seconds"] > runs.first_metrics[-1]["seconds"]


def test_sigint_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(runs: Runs, inputs: Inputs) -> None:
    result, step = runs.interrupted, runs.interrupted_step
    assert result.code == 130, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert result.last_stderr_line.startswith(f"error: interrupted at step {step}; saved checkpoint"), str(result)
    # The exact command that continues: the one that ran, with --resume added.
    command = shlex.join(["ropext", *map(str, _finetune(inputs, runs.interrupted_out, 100_000)), "--resume"])
    assert result.last_stderr_line.endswith(f"; to continue, run: {command}"), str(result)
    assert runs.interrupted_latest == f"step-{step}"
    assert [m["step"] for m in runs.interrupted_metrics] == list(range(1, step + 1))

    assert runs.after_interrupt is not None
    assert_ok(runs.after_interrupt)
    assert f"(resumed at step {step})" in runs.after_interrupt.stdout
    metrics = _metrics(runs.interrupted_out)
    assert [m["step"] for m in metrics] == list(range(1, step + 4))
    assert _latest(runs.interrupted_out) == f"step-{step + 3}"  # a resumed run ends with a checkpoint
    # Same data, seed and rate as the uninterrupted run: restored weights, optimizer moments and data
    # position give the same losses after the interruption as without one.
    uninterrupted = {m["step"]: m["loss"] for m in runs.first_metrics}
    compared = [m for m in metrics if m["step"] in uninterrupted]
    assert len(compared) > step
    for m in compared:
        assert m["loss"] == pytest.approx(uninterrupted[m["step"]], rel=1e-4), m["step"]


def test_saved_folder_reloads_with_the_same_frequencies_and_logits(runs: Runs, inputs: Inputs) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from ropext.model.apply import rotary_modules, verify_scaling
    from ropext.model.prepared import prepare_model
    from ropext.model.rope_config import write_scaling as configure

    out = runs.out
    scaling = RopeScaling.load(out / "rope_scaling.yaml")
    assert scaling == RopeScaling.load(inputs.factors)
    finetuned = scaling.provenance["finetuned"]
    assert finetuned["steps"] == RESUMED_STEPS
    # numbers, not "auto": the defaults were resolved before anything was recorded
    assert finetuned["position_skip"] == 1024 and "short_share" not in finetuned and "needle_share" not in finetuned
    # The config carries the scaling as apply.py writes it into a config.
    expected = AutoConfig.from_pretrained(inputs.model)
    configure(expected, scaling)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"] == json.loads(json.dumps(expected.rope_parameters))
    assert config["max_position_embeddings"] == expected.max_position_embeddings == 1024
    assert any(out.glob("*.safetensors")) and (out / "tokenizer.json").is_file()
    # Every file of the model folder has the permissions the user's umask gives (safetensors alone makes 0600).
    from ropext.permissions import new_file_mode

    for path in (*out.glob("*.safetensors"), out / "config.json", out / "rope_scaling.yaml"):
        assert stat.S_IMODE(path.stat().st_mode) == new_file_mode(), path

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    inv_freq = plain.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32
    # To float32 precision (transformers versions and rope types round the expression differently).
    torch.testing.assert_close(inv_freq, scaling.inv_freq(), rtol=1e-6, atol=0)
    verify_scaling(plain, scaling)

    patched = prepare_model(str(out), scaling, device="cpu", dtype="fp32").model
    assert len(rotary_modules(patched)) == 1
    ids = torch.from_numpy(np.arange(3, 3 + 300) % 500)[None]  # longer than the original 256 tokens
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, patched(ids).logits, rtol=0, atol=0)
        original = AutoModelForCausalLM.from_pretrained(inputs.model, dtype=torch.float32).eval()
        assert not torch.equal(original.lm_head.weight, plain.lm_head.weight)  # the weights were trained

    evaluated = run_cli("eval", "ppl", "--model", out, "--corpus", inputs.corpus, "--lengths", "512", "--max-docs", "1")
    assert_ok(evaluated)


# ---------------------------------------------------------------------------------------------- bad input
def _bad_json(folder: Path) -> Path:
    path = folder / "bad.json"
    path.write_text('{\n  "train_micro_batch_size_per_gpu": 1,\n  "zero_optimization" {"stage": 3}\n}\n')
    return path


def _stage2(folder: Path) -> Path:
    path = folder / "stage2.json"
    path.write_text(json.dumps({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}))
    return path


BAD = {
    "factors of another head dim": (lambda i, out: ["--factors", i.other_head_dim], ("16 factors", "(8 factors)")),
    "corpus cannot fill a micro batch": (
        lambda i, out: ["--train-length", "8k", "--batch-tokens", "16k"],
        ("fewer than one micro batch of 2 window(s) of 8192 tokens",),
    ),
    "deepspeed config does not parse": (
        lambda i, out: ["--deepspeed", _bad_json(i.folder)],
        ("bad.json: not valid JSON at line 3 column", "Expecting ':' delimiter"),
    ),
    "deepspeed config not zero-3": (lambda i, out: ["--deepspeed", _stage2(i.folder)], ("stage is 2", "ZeRO stage 3")),
    "batch tokens not whole windows": (lambda i, out: ["--batch-tokens", "200"], ("not a multiple of --train-length",)),
    "resume without checkpoint": (lambda i, out: ["--resume"], ("holds no checkpoint",)),
    "unknown attention": (lambda i, out: ["--attn", "fast"], ("unknown --attn 'fast'",)),
    "unknown sdpa backend": (lambda i, out: ["--sdpa-backend", "fast"], ("unknown --sdpa-backend 'fast'", "cudnn")),
    "unknown initialisation": (lambda i, out: ["--init", "zeros"], ("unknown --init 'zeros'", "pretrained, random")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clean_error_line(case: str, inputs: Inputs, tmp_path: Path) -> None:
    make, fragments = BAD[case]
    out = tmp_path / "out"
    # Options given twice take the last value: each case replaces or adds to a valid command.
    result = run_cli(*_finetune(inputs, out, 3), *make(inputs, out))
    assert_clean_error(result, *fragments)
    assert not out.exists()  # refused before anything was written


def test_gpus_without_the_deepspeed_launcher(inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_cli(*_finetune(inputs, tmp_path / "out", 3), "--gpus", "2")
    assert_clean_error(result, "--gpus 2", "`deepspeed` executable was not found")


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has 2 GPUs")
def test_gpus_without_cuda(inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = run_cli(*_finetune(inputs, tmp_path / "out", 3), "--gpus", "2")
    assert_clean_error(result, "--gpus 2 needs 2 CUDA GPUs")


def test_launcher_local_rank_argument_is_accepted(inputs: Inputs, tmp_path: Path) -> None:
    # `deepspeed --module ropext finetune ...` starts `python -m ropext --local_rank=0 finetune ...`.
    result = run_cli("--local_rank=0", *_finetune(inputs, tmp_path / "out", 3), "--factors", inputs.other_head_dim)
    assert_clean_error(result, "16 factors")


def test_random_init_trains_a_config_only_folder_without_saving_a_model(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shape without a checkpoint (how bench/finetune_scale.py runs a 7B model): config and tokenizer only.
    shape = tmp_path / "shape"
    shape.mkdir()
    for path in inputs.model.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, shape / path.name)
    out = tmp_path / "out"
    without_init = run_cli(*_finetune(inputs, out, 2), "--model", shape)
    assert_clean_error(without_init, "no weights")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result = run_cli_subprocess(*_finetune(inputs, out, 2), "--model", shape, "--init", "random", "--no-save-model")
    assert_ok(result)
    assert "--no-save-model: no model folder" in result.stdout
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    # a random model predicts the tiny vocabulary about uniformly: its loss starts near log(vocab)
    vocab = json.loads((shape / "config.json").read_text())["vocab_size"]
    assert abs(metrics[0]["loss"] - np.log(vocab)) < 1.0
    assert not list(out.glob("*.safetensors")) and not (out / "config.json").exists()
    # its metrics are all it made: a second run into the same folder is refused and leaves them as they are
    assert json.loads((out / "finished.json").read_text())["steps"] == 2
    before = (out / "metrics.jsonl").read_text()
    assert_clean_error(run_cli(*_finetune(inputs, out, 3)), "already holds files")
    assert (out / "metrics.jsonl").read_text() == before


def test_existing_output_is_not_overwritten(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_clean_error(run_cli(*_finetune(inputs, out, 3)), "already holds files", "--resume")
    assert (out / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------- the pieces
SEPARATOR = 0


def _fake_corpus(lengths: list[int]) -> TokenizedCorpus:
    """Token value = document · 1000 + position + 1, so every token says where it came from."""
    pieces = [np.arange(n, dtype=np.uint32) + 1000 * d + 1 for d, n in enumerate(lengths)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedCorpus("fake", np.concatenate(pieces), offsets)


def test_packing_cuts_documents_into_full_windows_with_separators() -> None:
    from ropext.train.data import PackedWindows, training_documents

    lengths = [37, 5, 120, 64, 1, 90]
    corpus = _fake_corpus(lengths)
    windows = PackedWindows(corpus, training_documents(corpus), length=32, separator=SEPARATOR, seed=7)
    assert windows.tokens_per_epoch == sum(lengths) + len(lengths)
    per_epoch = windows.windows_per_epoch
    assert per_epoch == windows.tokens_per_epoch // 32
    batch = windows.batch(0, per_epoch)
    assert batch.shape == (per_epoch, 32) and batch.dtype == np.int64
    seen: set[int] = set()
    for window in batch:
        for j, token in enumerate(window.tolist()):
            if token == SEPARATOR:
                continue
            document, position = divmod(token - 1, 1000)
            assert token not in seen  # no token twice in an epoch
            seen.add(token)
            if j > 0 and window[j - 1] != SEPARATOR:
                assert window[j - 1] == token - 1  # documents are contiguous
            if j > 0 and window[j - 1] == SEPARATOR:
                assert position == 0  # a separator is followed by a document's start
            if j + 1 < 32 and window[j + 1] == SEPARATOR:
                assert position == lengths[document] - 1  # ... and preceded by its end
    assert len(seen) + int((batch == SEPARATOR).sum()) == per_epoch * 32

    again = PackedWindows(corpus, training_documents(corpus), length=32, separator=SEPARATOR, seed=7)
    np.testing.assert_array_equal(again.batch(0, per_epoch + 3), windows.batch(0, per_epoch + 3))
    other_seed = PackedWindows(corpus, training_documents(corpus), length=32, separator=SEPARATOR, seed=8)
    assert not np.array_equal(other_seed.batch(0, per_epoch), batch)
    # The next epoch is another shuffle of the same documents (its left-over tail may differ).
    next_epoch = windows.batch(per_epoch, per_epoch)
    assert not np.array_equal(next_epoch, batch)
    tokens = next_epoch[next_epoch != SEPARATOR]
    assert len(np.unique(tokens)) == len(tokens) and np.isin(tokens, corpus.ids).all()


def test_skip_docs_holds_out_the_documents_evaluation_uses() -> None:
    from ropext.train.data import training_documents

    corpus = _fake_corpus([5, 50, 3, 60, 70, 8])
    assert training_documents(corpus).tolist() == [0, 1, 2, 3, 4, 5]
    assert training_documents(corpus, skip_docs=2).tolist() == [2, 3, 4, 5]
    # eval ppl --lengths 40 --max-docs 2 scores documents 1 and 3 (the first two of 40+ tokens).
    assert training_documents(corpus, skip_docs=2, skip_length=40).tolist() == [4, 5]
    assert training_documents(corpus, skip_docs=3, skip_length=40).tolist() == [5]
    for skip_docs, skip_length in ((4, 40), (6, 1)):
        with pytest.raises(RopextError, match="skips every document"):
            training_documents(corpus, skip_docs=skip_docs, skip_length=skip_length)


def test_chunked_loss_matches_transformers_loss_and_gradients(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    from ropext.train.loss import ChunkedLossModel

    torch.manual_seed(0)
    ids = torch.randint(0, 500, (2, 50))
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    expected = reference(input_ids=ids, labels=ids).loss
    expected.backward()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    wrapped = ChunkedLossModel(model, chunk_tokens=16)  # 8 positions per row and chunk: 7 chunks
    loss = wrapped(ids)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for (name, theirs), mine in zip(reference.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_recipe_is_the_built_in_default_and_the_command_line_overrides_it() -> None:
    from ropext.train import config as ds_config

    recipe = json.loads((REPO / "recipes" / "deepspeed" / "zero3.json").read_text())
    assert recipe["_comment"].startswith("ropext finetune ")
    assert ds_config.load_config(REPO / "recipes" / "deepspeed" / "zero3.json") == ds_config.DEFAULT_CONFIG
    stale = {**ds_config.DEFAULT_CONFIG, "train_batch_size": 64}
    config = ds_config.apply_overrides(stale, source="x", steps=100, lr=1e-4, micro_batch=2, grad_accum=8)
    assert config["optimizer"]["params"]["lr"] == 1e-4
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 8)
    assert "train_batch_size" not in config  # DeepSpeed derives it
    assert ds_config.precision(config) == "bf16"
    cpu = ds_config.for_accelerator(config, cpu=True)
    assert ds_config.precision(cpu) == "fp32" and cpu["optimizer"]["params"]["torch_adam"] is True
    scheduled = ds_config.apply_overrides(
        {**ds_config.DEFAULT_CONFIG, "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 10}}},
        source="x",
        steps=500,
        lr=3e-5,
    )
    assert scheduled["scheduler"]["params"] == {"warmup_num_steps": 10, "warmup_max_lr": 3e-5, "total_num_steps": 500}


def test_resume_refuses_other_settings_and_finished_runs(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tag = out / "checkpoints" / "step-3"
    tag.mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-3")
    state = {"step": 3, "samples": 3, "tokens": 384, "seconds": 1.0}
    from ropext.data.corpus import open_corpus

    scaling = {k: v for k, v in RopeScaling.load(inputs.factors).to_dict().items() if k != "provenance"}
    settings = {
        "scaling": scaling,
        "corpus_fingerprint": open_corpus(str(inputs.corpus)).fingerprint,
        "train_length": 256,  # the one difference
        "seed": 0,
        "skip_docs": 0,
        "skip_length": 1,
    }
    (tag / "ropext.json").write_text(json.dumps({"state": state, "world_size": 1, "settings": settings}))
    command = [*_finetune(inputs, out, 5), "--resume"]
    assert_clean_error(run_cli(*command), "step-3 was trained with train_length 256, not 128")
    assert_clean_error(run_cli(*command, "--steps", "3"), "already at step 3", "--steps above 3")
    with pytest.MonkeyPatch.context() as patch:  # as the launcher would start the first of 2 processes
        for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
            patch.setenv(key, value)
        assert_clean_error(run_cli(*command), "written by 1 process(es)", "this run has 2")
