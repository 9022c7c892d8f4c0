"""Peak GPU memory and time of one perplexity window: ropext's chunked loss against transformers'
own loss over full logits (``model(ids, labels=ids).loss``), same model, same tokens.

    python bench/loss_memory.py --model smollm2-135m --lengths 16k,32k,64k --out bench/results/loss-memory-h100.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ropext.evaluate.nll import summed_nll
from ropext.lengths import format_length, parse_lengths
from ropext.model.prepared import prepare_model


def measure(fn, repeats: int = 3) -> tuple[float, float]:
    """(median seconds, peak GiB) of ``fn()``, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="16k,32k,64k")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    prepared = prepare_model(args.model, None, device="cuda", dtype="bf16")
    model = prepared.model
    vocab = model.config.vocab_size
    rows = [
        f"{torch.cuda.get_device_name()}, {args.model}, bf16 weights, SDPA; median of 3 after a warm-up",
        "",
        "| length | chunked: s | chunked: GiB | full logits: s | full logits: GiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for length in parse_lengths(args.lengths):
        ids = torch.randint(0, vocab, (1, length), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        chunked = measure(lambda ids=ids: summed_nll(model, ids))

        def naive(ids=ids) -> None:
            with torch.inference_mode():
                model(ids, labels=ids).loss.item()

        try:
            full = measure(naive)
            full_cells = f"{full[0]:.3f} | {full[1]:.2f}"
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            full_cells = "out of memory | -"
        rows.append(f"| {format_length(length)} | {chunked[0]:.3f} | {chunked[1]:.2f} | {full_cells} |")
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
