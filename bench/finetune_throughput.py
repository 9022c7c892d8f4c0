"""Fine-tuning throughput: tokens/s per GPU, model FLOPs utilisation and peak memory at several train
lengths, each a short `ropext finetune` run on the same model, factors and corpus.

    python bench/finetune_throughput.py --model smollm2-135m --factors bench/results/search-h100/dcis-32k.yaml \
        --corpus ../shared/corpora/books-dev.jsonl.gz --lengths 8k,16k,32k --steps 12 --out-dir /tmp/ft \
        --summary bench/results/finetune-throughput-h100.md

    # a 7B Llama-2-shaped model with random weights on two GPUs (bench/model_shape.py writes the folder)
    python bench/model_shape.py llama2-7b --out /tmp/l7b
    ropext search --model /tmp/l7b --method yarn -t 32k --out /tmp/l7b-yarn-32k.yaml
    python bench/finetune_throughput.py --model /tmp/l7b --factors /tmp/l7b-yarn-32k.yaml --corpus ... \
        --lengths 16k,32k --steps 6 --gpus 2 --out-dir /tmp/ft --summary bench/results/... \
        -- --init random --no-save-model

FLOPs per token: 3 × the forward's 2·params + 2·n_layers·d_attn·L (backward = 2 × forward; REFERENCE.md);
params counts every weight once (SmolLM2's tied embedding once: it is the output projection's matmul). With
activation checkpointing the hardware does a fourth forward, which MFU does not count. The peak is the dense
bf16 peak of an H100 or H200 SXM (989 TFLOP/s).

Unattended runs: the summary (SUMMARY and SUMMARY.json) is rewritten after every length, and a length that
SUMMARY.json already has (a throughput or an out-of-memory at the same --gpus and --steps) is kept as it is
and not run again: delete its row to measure it again. A length whose run fails does not stop the others: if
its output says CUDA ran out of memory its row says "out of memory", any other failure is "failed (exit N)"
and the script exits 1 after writing the summary. A length whose out dir already holds metrics.jsonl with all
--steps steps is not run again (its row is rebuilt from that file); an incomplete one is deleted and run from
the start, since its throughput is the median of one run's steps.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ropext.lengths import format_length, parse_lengths

DENSE_BF16_TFLOPS = 989.0  # H100 SXM and H200 (same tensor cores)
OUT_OF_MEMORY = "out of memory"

# torch's own exception and message, ropext's one-line error for it, and the CUDA runtime's allocation failure
_OOM_PATTERN = re.compile(r"OutOfMemoryError|CUDA out of memory|out of GPU memory|CUDA error: out of memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--factors", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--lengths", default="8k,16k,32k")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the averages")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="more `ropext finetune` arguments, after --")
    args = parser.parse_args()

    from transformers import AutoConfig

    from ropext.model.loading import load_layout, materialize

    source, _ = load_layout(args.model)
    config = AutoConfig.from_pretrained(materialize(source).path)
    shape = ModelShape.of(config, _parameter_count(config))
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    header = (
        f"`{' '.join(sys.argv)}`\n\n{device}; {shape.params / 1e9:.3f}B parameters; medians over steps after "
        f"the first {args.warmup_steps}."
    )
    summary_json = args.summary.with_suffix(".json")
    earlier = read_summary_rows(summary_json)
    rows = []
    for length in parse_lengths(args.lengths):
        kept = summary_row(earlier, length, args.gpus, args.steps)
        if kept is not None:
            print(f"{format_length(length)}: in {summary_json} already; not run again", flush=True)
            rows.append(kept)
            write_summary(args.summary, header, rows)
            continue
        out = args.out_dir / f"ft-{format_length(length)}-{args.gpus}gpu"
        records = completed_records(out / "metrics.jsonl", args.steps)
        code, output = 0, ""
        if records is not None:
            print(f"{out / 'metrics.jsonl'} has all {args.steps} steps; not run again", flush=True)
        else:
            if out.exists():
                shutil.rmtree(out)  # an interrupted run's steps and checkpoint: this length starts over
            code, output = run_teed(finetune_command(args, length, out))
            records = completed_records(out / "metrics.jsonl", args.steps) if code == 0 else None
        if records is not None:
            rows.append(throughput_row(records, length, args.gpus, args.warmup_steps, shape))
        else:
            rows.append({"length": length, "gpus": args.gpus, "status": failure_status(code, output)})
        rows[-1]["steps"] = args.steps
        print(json.dumps(rows[-1]), flush=True)
        write_summary(args.summary, header, rows)
    print(summary_table(header, rows))
    if any(row.get("status", "").startswith("failed") for row in rows):
        sys.exit(1)


def finetune_command(args, length: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ropext",
        "finetune",
        "--model",
        args.model,
        "--factors",
        args.factors,
        "--corpus",
        args.corpus,
        "--train-length",
        str(length),
        "--steps",
        str(args.steps),
        "--out",
        str(out),
        "--gpus",
        str(args.gpus),
        "--save-every",
        "0",
        # plain windows, as the committed numbers were measured (finetune's defaults would add PoSE and
        # retrieval practice); arguments after -- may still ask for them
        *("--position-skip", "off", "--short-share", "0", "--needle-share", "0"),
        *args.extra,
    ]


def run_teed(command: list[str]) -> tuple[int, str]:
    """Runs ``command`` with its stdout and stderr copied line by line to ours (the log shows its progress) and
    kept, so a failure can be told apart afterwards: its exit status and everything it printed."""
    print(" ".join(command), flush=True)
    kept = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            kept.append(line)
    return child.returncode, "".join(kept)


def ran_out_of_memory(output: str) -> bool:
    """Whether a failed run's output says CUDA ran out of memory (on any rank)."""
    return _OOM_PATTERN.search(output) is not None


def failure_status(code: int, output: str) -> str:
    """A summary row's status for a run that left no complete metrics.jsonl."""
    if ran_out_of_memory(output):
        return OUT_OF_MEMORY
    return f"failed (exit {code})" if code else "failed (exit 0, metrics.jsonl incomplete)"


def completed_records(path: Path, steps: int) -> list[dict] | None:
    """Steps 1..``steps`` of a metrics.jsonl (one record per optimizer step), or None while any is missing."""
    if not path.is_file():
        return None
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            by_step[record["step"]] = record
    if any(step not in by_step for step in range(1, steps + 1)):
        return None
    return [by_step[step] for step in range(1, steps + 1)]


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs per token need of the model: its weights, layers and attention width, and which layers
    attend through a sliding window (Gemma 3's local layers) and how wide it is."""

    params: int
    layers: int
    d_attn: int
    sliding_layers: int = 0
    window: int | None = None

    @classmethod
    def of(cls, config, params: int) -> ModelShape:
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None) or []
        sliding = sum(kind == "sliding_attention" for kind in layer_types) if window else 0
        return cls(params, config.num_hidden_layers, config.num_attention_heads * head_dim, sliding, window)

    def train_flops_per_token(self, length: int) -> float:
        # Attention costs 4·d_attn per key a token attends to (scores and values). Causally a full layer's
        # tokens attend to L/2 keys on average (REFERENCE.md's 2·n_layers·d_attn·L); a sliding layer's to
        # min(i + 1, W) keys, W - W²/2L on average (continuous, as L/2 is), which is L/2 again when W ≥ L.
        def keys(window: int) -> float:
            span = min(window, length)
            return span - span * span / (2 * length)

        full = self.layers - self.sliding_layers
        attended = full * keys(length) + self.sliding_layers * keys(self.window or length)
        return 3 * (2 * self.params + 4 * self.d_attn * attended)


def throughput_row(records: list[dict], length: int, gpus: int, warmup_steps: int, shape: ModelShape) -> dict:
    """A summary row from one run's per-step records: median tokens/s over the steps after the warm-up."""
    timed = records[warmup_steps:] or records
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in timed)
    per_gpu = tokens_per_s / gpus
    peak = max((r.get("peak_memory_gb") or 0.0) for r in records) or None
    return {
        "length": length,
        "gpus": gpus,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": per_gpu,
        "mfu": shape.train_flops_per_token(length) * per_gpu / (DENSE_BF16_TFLOPS * 1e12),
        "peak_memory_gb": peak,
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
    }


def summary_table(header: str, rows: list[dict]) -> str:
    lines = [
        header,
        "",
        "| train length | GPUs | tokens/s | tokens/s per GPU | MFU (of 989 TFLOP/s) | peak memory per GPU (GiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "status" in r:
            lines.append(f"| {format_length(r['length'])} | {r['gpus']} | {r['status']} | - | - | - |")
            continue
        peak = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] else "-"
        lines.append(
            f"| {format_length(r['length'])} | {r['gpus']} | {r['tokens_per_s']:,.0f} "
            f"| {r['tokens_per_s_per_gpu']:,.0f} | {100 * r['mfu']:.1f}% | {peak} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(summary: Path, header: str, rows: list[dict]) -> None:
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(summary_table(header, rows))
    summary.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def read_summary_rows(summary_json: Path) -> list[dict]:
    """The rows an earlier run left in SUMMARY.json (none when there is no readable file)."""
    try:
        rows = json.loads(summary_json.read_text())
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


def summary_row(rows: list[dict], length: int, gpus: int, steps: int | None = None) -> dict | None:
    """An earlier row that is a result for ``length`` on ``gpus`` GPUs: a throughput or an out-of-memory, not a
    failure, and of the same --steps where the row records them (rows written before it did are taken as is)."""
    for row in rows:
        same_steps = steps is None or row.get("steps", steps) == steps
        failed = row.get("status", "").startswith("failed")
        if row.get("length") == length and row.get("gpus") == gpus and same_steps and not failed:
            return row
    return None


def summary_complete(summary_json: str | Path, lengths: str, gpus: int | str) -> bool:
    """Whether a summary json has a result row for every length of ``lengths`` at ``gpus`` GPUs;
    bench/long_context_matrix.sh then skips the whole run (and the model it would first build)."""
    rows = read_summary_rows(Path(summary_json))
    return all(summary_row(rows, length, int(gpus)) is not None for length in parse_lengths(lengths))


def _parameter_count(config) -> int:
    """Weights of the model the config describes, built on the meta device (no memory, no checkpoint needed)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
