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
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

DENSE_BF16_TFLOPS = 989.0  # H100 SXM and H200 (same tensor cores)


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

    from ropext.lengths import format_length, parse_lengths
    from ropext.model.loading import load_layout, materialize

    source, _ = load_layout(args.model)
    config = AutoConfig.from_pretrained(materialize(source).path)
    params = _parameter_count(config)
    d_attn = config.num_attention_heads * (config.head_dim or config.hidden_size // config.num_attention_heads)
    rows = []
    for length in parse_lengths(args.lengths):
        out = args.out_dir / f"ft-{format_length(length)}-{args.gpus}gpu"
        command = [
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
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        timed = records[args.warmup_steps :] or records
        tokens_per_s = statistics.median(r["tokens_per_s"] for r in timed)
        per_gpu = tokens_per_s / args.gpus
        flops = 3 * (2 * params + 2 * config.num_hidden_layers * d_attn * length)
        peak = max((r.get("peak_memory_gb") or 0.0) for r in records) or None
        rows.append(
            {
                "length": length,
                "gpus": args.gpus,
                "tokens_per_s": tokens_per_s,
                "tokens_per_s_per_gpu": per_gpu,
                "mfu": flops * per_gpu / (DENSE_BF16_TFLOPS * 1e12),
                "peak_memory_gb": peak,
                "first_loss": records[0]["loss"],
                "last_loss": records[-1]["loss"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = [
        f"`{' '.join(sys.argv)}`",
        "",
        f"{device}; {params / 1e9:.3f}B parameters; medians over steps after the first {args.warmup_steps}.",
        "",
        "| train length | GPUs | tokens/s | tokens/s per GPU | MFU (of 989 TFLOP/s) | peak memory per GPU (GiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] else "-"
        lines.append(
            f"| {format_length(r['length'])} | {r['gpus']} | {r['tokens_per_s']:,.0f} "
            f"| {r['tokens_per_s_per_gpu']:,.0f} | {100 * r['mfu']:.1f}% | {peak} |"
        )
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text("\n".join(lines) + "\n")
    args.summary.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


def _parameter_count(config) -> int:
    """Weights of the model the config describes, built on the meta device (no memory, no checkpoint needed)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
