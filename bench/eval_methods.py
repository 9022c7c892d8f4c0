"""Perplexity and passkey of every closed-form method on one model, with one model load.

The numbers in docs/results.md come from (on one H100, corpus from the project's development data):

    python bench/eval_methods.py --model smollm2-135m --corpus ../shared/corpora/books-dev.jsonl.gz \
        --target-length 64k --lengths 8k,16k,32k,64k --max-docs 10 \
        --passkey-lengths 8k,16k,32k,64k --trials 4 --out-dir bench/results/methods-h100

Each (method, task) is written as the same JSON file that `ropext eval ppl|passkey --json` writes,
so rerunning after an interruption continues, and `summary.md` holds the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from ropext.compare import compare_methods, markdown_table
from ropext.errors import RopextError
from ropext.evaluate.passkey import PasskeyOptions
from ropext.evaluate.ppl import PerplexityOptions
from ropext.lengths import parse_length, parse_lengths
from ropext.results import comparison_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", required=True)
    parser.add_argument(
        "--methods", nargs="+", default=["none", "pi", "ntk", "yarn", "dprope"], help="names, or name:k=v,k=v"
    )
    parser.add_argument("--target-length", default="64k")
    parser.add_argument("--lengths", default="8k,16k,32k,64k")
    parser.add_argument("--max-docs", type=int, default=10)
    parser.add_argument("--passkey-lengths", default="", help="empty: no passkey")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()

    ppl = PerplexityOptions(corpus=args.corpus, lengths=tuple(parse_lengths(args.lengths)), max_docs=args.max_docs)
    passkey = None
    if args.passkey_lengths:
        depths = tuple(float(d) for d in args.depths.split(","))
        passkey = PasskeyOptions(
            lengths=tuple(parse_lengths(args.passkey_lengths, "--passkey-lengths")), depths=depths, trials=args.trials
        )
    began = time.perf_counter()
    summary = compare_methods(
        args.model, args.methods, parse_length(args.target_length, "--target-length"), ppl, passkey, args.out_dir
    )
    seconds = time.perf_counter() - began
    lines = [
        f"Command: `python {' '.join(sys.argv)}`",
        f"Host: {platform.node()}, {_device()}; wall time {seconds:.0f} s",
        "",
        "Perplexity (lower is better):",
        "",
        markdown_table(summary, "ppl", "ppl"),
        "",
        "Seconds per window:",
        "",
        markdown_table(summary, "ppl", "seconds_per_window"),
        "",
        "Peak GPU memory (GiB):",
        "",
        markdown_table(summary, "ppl", "peak_memory_gb") if _has_gpu() else "(no GPU)",
    ]
    if passkey is not None:
        lines += ["", "Passkey accuracy:", "", markdown_table(summary, "passkey", "accuracy")]
    (args.out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    # Marked as a comparison summary, so `ropext report` skips it when a glob catches it.
    (args.out_dir / "summary.json").write_text(json.dumps(comparison_summary(summary), indent=1) + "\n")
    print("\n".join(lines))


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


if __name__ == "__main__":
    try:
        main()
    except RopextError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
