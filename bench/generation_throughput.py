"""Greedy generation speed with a scaling applied: prefill tokens/s and decode tokens/s (new tokens of the whole
batch per second) at several context lengths, the KV cache on, as `ropext eval ruler` and `eval passkey`
generate.

    python bench/generation_throughput.py --model smollm2-135m --factors bench/results/search-h100/longrope-32k.yaml \
        --corpus ../shared/corpora/books-dev.jsonl.gz --lengths 4k,8k,16k,32k --batch-sizes 1,16 \
        --out bench/results/generation-h100.md

Prompts are the first L tokens of corpus documents (one per batch row), all of the same length (no padding).
Every row generates exactly --new-tokens tokens (end-of-sequence ignored). Each measurement is the median of
--repeats after one warm-up; decode time = generate's time - the prefill's (one forward of the prompt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--factors", type=Path, default=None)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--lengths", default="4k,8k,16k,32k")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from ropext.data.corpus import open_corpus
    from ropext.data.tokenized import tokenize_corpus
    from ropext.lengths import format_length, parse_lengths
    from ropext.model.loading import load_layout
    from ropext.model.prepared import choose_scaling, prepare_model

    source, layout = load_layout(args.model)
    scaling = choose_scaling(layout, factors=args.factors) if args.factors else None
    prepared = prepare_model(args.model, scaling, layout=(source, layout))
    corpus = tokenize_corpus(prepared.tokenizer, open_corpus(args.corpus))
    lengths = parse_lengths(args.lengths)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    documents = corpus.documents_at_least(max(lengths))
    if len(documents) < max(batches):
        sys.exit(f"error: {args.corpus} has {len(documents)} documents of {max(lengths)}+ tokens; need {max(batches)}")
    model = prepared.model
    rows = []
    for length in lengths:
        for batch in batches:
            rows_ids = [torch.from_numpy(corpus.document(d)[:length].astype("int64")) for d in documents[:batch]]
            ids = torch.stack(rows_ids).to(prepared.device)
            prefill, total = [], []
            for repeat in range(args.repeats + 1):
                _sync()
                began = time.perf_counter()
                with torch.inference_mode():
                    model(ids, logits_to_keep=1)
                _sync()
                middle = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens,
                        do_sample=False,
                        pad_token_id=prepared.tokenizer.eos_token_id,
                    )
                _sync()
                end = time.perf_counter()
                assert out.shape[1] == length + args.new_tokens
                if repeat:  # the first is a warm-up
                    prefill.append(middle - began)
                    total.append(end - middle)
            prefill_s, total_s = statistics.median(prefill), statistics.median(total)
            decode_s = max(total_s - prefill_s, 1e-9)
            rows.append(
                {
                    "length": length,
                    "batch": batch,
                    "prefill_tokens_per_s": batch * length / prefill_s,
                    "decode_tokens_per_s": batch * args.new_tokens / decode_s,
                    "ms_per_decode_step": 1000 * decode_s / args.new_tokens,
                    "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    name = args.factors.name if args.factors else "no scaling"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    lines = [
        f"`{' '.join(sys.argv)}`",
        "",
        f"{device}; {args.model} with {name}; {dtype}, SDPA; {args.new_tokens} new tokens per row.",
        "",
        "| context | batch | prefill tokens/s | decode tokens/s | ms per decode step | peak GiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {format_length(r['length'])} | {r['batch']} | {r['prefill_tokens_per_s']:,.0f} "
            f"| {r['decode_tokens_per_s']:,.0f} | {r['ms_per_decode_step']:.1f} | {r['peak_memory_gb']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
