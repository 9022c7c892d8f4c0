"""``make demo``: textbook scalings of the built-in SmolLM2 on the built-in corpus, below and beyond
its original 8k context. On a 2-core CPU it evaluates one document at 4k and 12k (about 6 minutes);
with a GPU, five documents at 8k, 16k and 32k."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ropext.errors import RopextError


def main() -> None:
    import torch
    from rich.console import Console

    from ropext.compare import compare_methods, markdown_table
    from ropext.evaluate.ppl import PerplexityOptions

    gpu = torch.cuda.is_available()
    lengths = (8192, 16384, 32768) if gpu else (4096, 12288)
    target = 32768 if gpu else 16384
    options = PerplexityOptions(corpus="python-stdlib", lengths=lengths, max_docs=5 if gpu else 1)
    methods = ("none", "pi", "ntk", "yarn", "dprope")
    console = Console()
    console.print(
        f"ropext demo: SmolLM2-135M (trained to 8k) on the Python standard library's longest modules, "
        f"{'GPU' if gpu else 'CPU'}, methods scaled to {target // 1024}k, perplexity (lower is better)"
    )
    began = time.perf_counter()
    summary = compare_methods("smollm2-135m", methods, target, options, None, Path("out/demo"))
    console.print(markdown_table(summary, "ppl", "ppl"))
    console.print(f"{time.perf_counter() - began:.0f} s; result files in out/demo/")


if __name__ == "__main__":
    try:
        main()
    except RopextError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
