"""`ropext finetune --sequence-parallel`: DeepSpeed's Ulysses on the CPU accelerator, two gloo processes.

The two processes are started as the deepspeed launcher starts them (WORLD_SIZE, RANK, LOCAL_RANK and the
rendezvous address in the environment of `python -m ropext finetune`), so the command's own launcher path runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from integration_support import (
    HEAD_DIM,
    ORIGINAL_CONTEXT,
    CorpusFiles,
    assert_clean_error,
    assert_ok,
    run_cli,
    run_cli_subprocess,
)
from safetensors.torch import load_file

from ropext.methods import METHODS
from ropext.model.loading import load_layout
from ropext.train.shared_memory import allreduce_buffer

TRAIN_LENGTH = 128
STEPS = 2
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
"""float32 on both sides; the two runs differ only in summation order (attention over gathered heads, the
loss summed per shard), far below one optimizer step's change of the weights (asserted to exceed 1e-3)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def inputs(tiny_model: Path, corpus_files: CorpusFiles, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("sequence-parallel")
    _, layout = load_layout(str(tiny_model))
    factors = folder / "yarn-1k.yaml"
    METHODS.get("yarn")(layout, 1024).save(factors)
    # AdamW with an epsilon far above every gradient moves each weight by about lr × gradient / eps: the
    # weights after a step show the gradients' scale (with the usual 1e-8, Adam's first step is lr × sign).
    config = folder / "sgd-like.json"
    config.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 1,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 0.0,
                "optimizer": {"type": "AdamW", "params": {"lr": 10.0, "eps": 100.0, "weight_decay": 0.0}},
                "zero_optimization": {"stage": 3},
            }
        )
    )
    return {"model": tiny_model, "corpus": corpus_files.folder, "factors": factors, "config": config}


def _command(inputs: dict, out: Path, *extra: str) -> list[str]:
    return [
        "finetune", "--model", str(inputs["model"]), "--factors", str(inputs["factors"]),
        "--corpus", str(inputs["corpus"]), "--train-length", str(TRAIN_LENGTH), "--steps", str(STEPS),
        "--deepspeed", str(inputs["config"]), "--position-skip", "512", "--out", str(out), *extra,
    ]  # fmt: skip


def _launch_two(arguments: list[str]) -> None:
    port = str(_free_port())
    processes = []
    for rank in range(2):
        env = {
            **os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "ropext", *arguments], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    # DeepSpeed's CPU all-reduce buffers of this launch are gone with its processes (it never unlinks them)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    assert [allreduce_buffer(rank, env) for rank in range(2) if allreduce_buffer(rank, env).exists()] == []


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(inputs: dict, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert_ok(run_cli_subprocess(*_command(inputs, one)))
    _launch_two(_command(inputs, two, "--sequence-parallel", "2"))
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_RTOL)
    # The second step's loss depends on the first step's gradients: it moved.
    assert abs(_losses(one)[1] - _losses(one)[0]) > 1e-3
    before = load_file(inputs["model"] / "model.safetensors")
    single, parallel = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert single.keys() == parallel.keys()
    moved = max(float((single[k] - before[k]).abs().max()) for k in single if k in before)
    assert moved > 1e-3
    for key in single:
        torch.testing.assert_close(parallel[key], single[key], rtol=0, atol=WEIGHT_ATOL, msg=key)


SLIDING_WINDOW = 16
"""Far below TRAIN_LENGTH: a local layer that attended over the whole window would change every loss."""


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A random Gemma 3 (sliding-window local layers, one key/value head) with the tiny tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path_factory.mktemp("tiny-gemma3")
    config = Gemma3TextConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=SLIDING_WINDOW,
        num_attention_heads=4, num_key_value_heads=1, head_dim=HEAD_DIM, max_position_embeddings=ORIGINAL_CONTEXT,
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, initializer_range=0.1,
        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_sliding_window_layers_keep_their_window_across_the_group(
    inputs: dict, tiny_gemma: Path, tmp_path: Path
) -> None:
    """Ulysses drops attention masks; Gemma's local layers must still see only their window of the gathered
    sequence, so two processes train the tiny Gemma as one does (with plain sdpa they attended everywhere)."""
    _, layout = load_layout(str(tiny_gemma))
    factors = tmp_path / "gemma-yarn-1k.yaml"
    METHODS.get("yarn")(layout, 1024).save(factors)
    gemma = {**inputs, "model": tiny_gemma, "factors": factors}
    one, two = tmp_path / "one", tmp_path / "two"
    assert_ok(run_cli_subprocess(*_command(gemma, one)))
    _launch_two(_command(gemma, two, "--sequence-parallel", "2"))
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_RTOL)
    single, parallel = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for key in single:
        torch.testing.assert_close(parallel[key], single[key], rtol=0, atol=WEIGHT_ATOL, msg=key)


def _regime_worker(rank: int, port: int, results: dict) -> None:
    import torch.distributed as dist
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from ropext.train.sequence_parallel import SequenceGroup, hold_window_regime

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=256,
        rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
            "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
        },
    )  # fmt: skip
    rotary = LlamaRotaryEmbedding(config)
    window = torch.arange(128)[None]  # shard 0 holds positions 0..63, all within the original 64
    x = torch.zeros(1, 64, 64)
    whole = rotary(torch.zeros(1, 128, 64), position_ids=window)[0][:, rank * 64 : (rank + 1) * 64]
    alone = rotary(x, position_ids=window[:, rank * 64 : (rank + 1) * 64])[0]
    hold_window_regime(torch.nn.ModuleDict({"rotary": rotary}), SequenceGroup(dist.group.WORLD, rank, 2))
    held = rotary(x, position_ids=window[:, rank * 64 : (rank + 1) * 64])[0]
    results[rank] = (bool(torch.equal(held, whole)), bool(torch.equal(alone, whole)), tuple(held.shape))
    dist.destroy_process_group()


def test_every_shard_uses_the_window_regime() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_regime_worker, args=(_free_port(), results), nprocs=2)
        results = dict(results)
    assert results[0] == (True, False, (1, 64, 16))  # shard 0 alone would run the short factors
    assert results[1] == (True, True, (1, 64, 16))


@pytest.mark.parametrize(
    ("world", "extra", "fragments"),
    [
        (
            "3",
            ["--sequence-parallel", "3", "--train-length", "132"],
            ("4 attention heads and 2 key/value heads", "--sequence-parallel 2 or 4"),
        ),
        ("2", ["--sequence-parallel", "2", "--train-length", "129"], ("does not split into 2 equal shards",)),
        ("3", ["--sequence-parallel", "2"], ("does not divide the 3 process(es)",)),
        ("2", ["--sequence-parallel", "2", "--attn", "eager"], ("needs --attn sdpa",)),
    ],
)
def test_bad_sequence_parallel_input_is_one_line(
    inputs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: str, extra: list[str], fragments: tuple
) -> None:
    # As the launcher starts the first process: planning fails before any process group is joined.
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = run_cli(*_command(inputs, tmp_path / "out"), *extra)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_one_gpu_cannot_hold_a_group(inputs: dict, tmp_path: Path) -> None:
    result = run_cli(*_command(inputs, tmp_path / "out"), "--sequence-parallel", "2")
    assert_clean_error(result, "does not divide the 1 process(es)", "--gpus 2")


def test_two_processes_resume_where_they_stopped(inputs: dict, tmp_path: Path) -> None:
    """Stopped after 2 steps with a checkpoint and resumed to 4, a sequence-parallel run ends where an
    uninterrupted one does, its retrieval practice included (the answers' loss summed over the group)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # practice needs room: 4 needles, a question and an answer take about 200 of the tiny tokenizer's tokens
    options = ("--sequence-parallel", "2", "--needle-share", "0.5", "--train-length", "256")
    _launch_two(_command(inputs, straight, *options, "--steps", "4"))
    _launch_two(_command(inputs, resumed, *options, "--steps", "2", "--save-every", "2"))
    _launch_two(_command(inputs, resumed, *options, "--steps", "4", "--resume"))
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["needle_windows"] for r in records) > 0  # practice windows were trained across the group
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=LOSS_RTOL)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=WEIGHT_ATOL, msg=key)
