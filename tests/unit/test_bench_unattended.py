"""The pure parts of the unattended 7B benchmarks: bench/search.py's engine table and resume check, and
bench/finetune_throughput.py's rows, out-of-memory detection and skip-when-complete checks. No GPU needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def search(load_bench):
    return load_bench("search")


@pytest.fixture(scope="module")
def throughput(load_bench):
    return load_bench("finetune_throughput")


def _table_row(table: str, length: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {length} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_engine_table_marks_unmeasured_columns_and_out_of_memory(search) -> None:
    measured = {
        "length": 32768, "samples": 1, "candidates": 2, "init": "random",
        "engine_auto_s_per_candidate": 1.25, "engine_tokens_per_s": 26214.4, "tflops": 400.0, "mfu": 0.404,
    }  # fmt: skip
    oom = {"length": 131072, "samples": 1, "candidates": 2, "init": "random", "oom": True,
           "engine_auto_s_per_candidate": None}  # fmt: skip
    table = search.engine_table([oom, measured], "header")
    assert table.splitlines()[0] == "header"
    assert _table_row(table, "32k") == ["32k", "1.250", "-", "-", "-", "-", "26214", "400.0", "40.4%"]
    assert _table_row(table, "128k") == ["128k", "OOM", "-", "-", "-", "-", "-", "-", "-"]
    # rows come out by length whatever order they were measured in
    assert table.index("| 32k |") < table.index("| 128k |")


def test_engine_table_keeps_the_full_rows_of_the_committed_h100_run(search) -> None:
    rows = json.loads((ROOT / "bench" / "results" / "search-h100" / "engine.json").read_text())
    table = search.engine_table(rows, "header")
    committed = (ROOT / "bench" / "results" / "search-h100" / "engine.md").read_text().splitlines()
    assert table.splitlines()[1:] == committed[1:]


def test_engine_rerun_keeps_only_rows_of_the_same_measurement(search) -> None:
    rows = [
        {"length": 32768, "samples": 1, "candidates": 2, "init": "random", "engine_auto_s_per_candidate": 1.0},
        {"length": 65536, "samples": 1, "candidates": 2, "init": "random", "oom": True},
        {"length": 8192, "samples": 5, "candidates": 4},  # written before rows recorded --init
    ]
    assert search.already_measured(rows, 32768, 1, 2, "random") is rows[0]
    assert search.already_measured(rows, 65536, 1, 2, "random") is rows[1]  # an OOM would run out again
    assert search.already_measured(rows, 131072, 1, 2, "random") is None
    assert search.already_measured(rows, 32768, 2, 2, "random") is None
    assert search.already_measured(rows, 32768, 1, 4, "random") is None
    assert search.already_measured(rows, 32768, 1, 2, "pretrained") is None
    assert search.already_measured(rows, 8192, 5, 4, "pretrained") is rows[2]


def _metrics(path: Path, steps: int, cut: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"step": s, "loss": 10.0 - s, "tokens_per_s": 1000.0 * s, "peak_memory_gb": 60.0 + s})
        for s in range(1, steps + 1)
    ]
    path.write_text("\n".join(lines) + ('\n{"step": ' if cut else "\n"))
    return path


def test_a_complete_metrics_file_gives_its_steps_and_an_incomplete_one_none(throughput, tmp_path) -> None:
    path = _metrics(tmp_path / "ft-64k-2gpu" / "metrics.jsonl", 6)
    assert [r["step"] for r in throughput.completed_records(path, 6)] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in throughput.completed_records(path, 4)] == [1, 2, 3, 4]
    assert throughput.completed_records(path, 7) is None
    cut = _metrics(tmp_path / "cut" / "metrics.jsonl", 4, cut=True)  # killed during step 5's line
    assert throughput.completed_records(cut, 6) is None
    assert len(throughput.completed_records(cut, 4)) == 4
    assert throughput.completed_records(tmp_path / "missing" / "metrics.jsonl", 1) is None


def test_throughput_row_is_the_median_after_the_warmup(throughput, tmp_path) -> None:
    records = throughput.completed_records(_metrics(tmp_path / "m.jsonl", 6), 6)
    shape = throughput.ModelShape(params=7_000_000_000, layers=32, d_attn=4096)
    row = throughput.throughput_row(records, 65536, 2, 3, shape)
    assert row["tokens_per_s"] == 5000.0  # median of steps 4, 5, 6
    assert row["tokens_per_s_per_gpu"] == 2500.0
    assert row["peak_memory_gb"] == 66.0
    assert (row["first_loss"], row["last_loss"]) == (9.0, 4.0)
    flops = 3 * (2 * 7e9 + 2 * 32 * 4096 * 65536)
    assert row["mfu"] == pytest.approx(flops * 2500.0 / 989e12)


def test_sliding_layers_count_the_keys_of_their_window(throughput) -> None:
    full = throughput.ModelShape(params=0, layers=3, d_attn=256)
    gemma = throughput.ModelShape(params=0, layers=3, d_attn=256, sliding_layers=2, window=512)
    length = 131072
    # a full layer: L/2 keys per token on average; a sliding one: W - W²/2L (keys min(i + 1, W) at position i)
    average = sum(min(i + 1, 512) for i in range(length)) / length
    # (the formula is the continuous average, as L/2 is: within W/2L of the count)
    assert 512 - 512 * 512 / (2 * length) == pytest.approx(average, rel=1e-5)
    assert gemma.train_flops_per_token(length) == pytest.approx(3 * 4 * 256 * (length / 2 + 2 * average), rel=1e-5)
    assert full.train_flops_per_token(length) == pytest.approx(3 * 2 * 3 * 256 * length)
    # a window at least as long as the input is a full layer
    assert gemma.train_flops_per_token(512) == pytest.approx(full.train_flops_per_token(512))


def test_the_shape_of_a_gemma3_config(throughput) -> None:
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(
        num_hidden_layers=6, num_attention_heads=4, head_dim=256, sliding_window=512,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
    )  # fmt: skip
    shape = throughput.ModelShape.of(config, 270_000_000)
    assert (shape.layers, shape.d_attn, shape.sliding_layers, shape.window) == (6, 1024, 5, 512)


def test_out_of_memory_is_told_apart_from_other_failures(throughput) -> None:
    torch_oom = (
        "finetune: 1/6 (17%)\nTraceback (most recent call last):\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 16.00 GiB. GPU 1 has a total capacity"
    )
    ropext_oom = "error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB); use a shorter ..."
    assert throughput.failure_status(1, torch_oom) == "out of memory"
    assert throughput.failure_status(2, ropext_oom) == "out of memory"
    assert throughput.failure_status(2, "error: --factors x.yaml does not exist") == "failed (exit 2)"
    assert throughput.failure_status(-9, "finetune: 3/6 (50%)") == "failed (exit -9)"


def test_summary_table_writes_a_dash_for_what_a_failed_length_did_not_measure(throughput) -> None:
    rows = [
        {"length": 65536, "gpus": 2, "tokens_per_s": 7279.4, "tokens_per_s_per_gpu": 3639.7, "mfu": 0.342,
         "peak_memory_gb": 70.5},
        {"length": 131072, "gpus": 2, "status": "out of memory"},
    ]  # fmt: skip
    table = throughput.summary_table("header", rows)
    assert "| 64k | 2 | 7,279 | 3,640 | 34.2% | 70.5 |" in table
    assert "| 128k | 2 | out of memory | - | - | - |" in table


def test_a_summary_is_complete_when_every_length_has_a_result(throughput, tmp_path) -> None:
    committed = ROOT / "bench" / "results" / "long-context-h200" / "ulysses-7b-sp2.json"
    assert throughput.summary_complete(committed, "64k,128k", "2")
    assert not throughput.summary_complete(committed, "64k,128k,256k", "2")
    assert not throughput.summary_complete(committed, "64k,128k", "1")
    assert not throughput.summary_complete(tmp_path / "none.json", "64k", 2)
    partial = tmp_path / "sp1.json"
    partial.write_text(json.dumps([
        {"length": 65536, "gpus": 2, "steps": 6, "status": "out of memory"},
        {"length": 131072, "gpus": 2, "steps": 6, "status": "failed (exit 1)"},
    ]))  # fmt: skip
    assert throughput.summary_complete(partial, "64k", 2)  # an out-of-memory is a result
    assert not throughput.summary_complete(partial, "64k,128k", 2)  # a failure is not
    rows = throughput.read_summary_rows(partial)
    assert throughput.summary_row(rows, 65536, 2, 6) is rows[0]
    assert throughput.summary_row(rows, 65536, 2, 12) is None  # measured over other --steps
