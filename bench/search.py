"""Searched factors against the closed-form methods, and the speed of the perplexity engine.

Three stages, each resumable (rerun the same command after a time-out or a kill and it continues):

    # 1. engine: seconds per candidate and tokens/s against a naive evaluation, TFLOP/s, SDPA backends
    python bench/search.py engine --corpus ../shared/corpora/books-dev.jsonl.gz --out-dir bench/results/search-h100
    # 2. search: DCIS and LongRoPE for 8k -> 32k and 8k -> 64k on the first 5 documents
    python bench/search.py search --corpus ../shared/corpora/books-dev.jsonl.gz --out-dir bench/results/search-h100 \
        --targets 32k,64k --searchers dcis,longrope
    # racing against the committed DCIS-64k search (457 s on one H200 without it): same search, --race
    # (the partial run in bench/results/racing-h200 used --race-margin 0.01, the default then)
    python bench/search.py search --corpus ../shared/corpora/books-dev.jsonl.gz --out-dir bench/results/racing-h200 \
        --targets 64k --searchers dcis --no-critical-floor --race --race-margin 0.01
    python bench/search.py eval --corpus ../shared/corpora/books-dev.jsonl.gz --out-dir bench/results/racing-h200 \
        --targets 64k
    # 3. eval: every closed-form method and every searched YAML on documents the search did not use
    python bench/search.py eval --corpus ../shared/corpora/books-dev.jsonl.gz --out-dir bench/results/search-h100 \
        --targets 32k,64k

A search that outlasts one job resumes from its journal in the next job: the search is a chain of
short jobs. `--longrope-budget` caps LongRoPE's evaluations where a full run (1344) does not fit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ropext.compare import compare_methods, markdown_table
from ropext.evaluate.passkey import PasskeyOptions
from ropext.evaluate.ppl import PerplexityOptions
from ropext.lengths import format_length, parse_lengths
from ropext.methods import METHODS
from ropext.model.apply import apply_scaling
from ropext.model.loading import load_layout
from ropext.model.prepared import prepare_model
from ropext.scaling import RopeScaling
from ropext.search.engine import EngineOptions, PerplexityEngine
from ropext.search.racing import DEFAULT_MARGIN, RACE_BY_DEFAULT
from ropext.search.run import SearchRequest, run_search, search_windows

FIXED_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the committed evaluations' depths, 4 keys at each
H100_DENSE_BF16_TFLOPS = 989.0  # NVIDIA's dense (no sparsity) BF16 peak for the H100 SXM


def forward_flops_per_token(config, length: int, params: int) -> float:
    """2·params + 2·n_layers·d_attn·L: the matmuls plus causal attention (QK^T and PV, averaged)."""
    d_attn = config.num_attention_heads * (config.head_dim or config.hidden_size // config.num_attention_heads)
    return 2 * params + 2 * config.num_hidden_layers * d_attn * length


def perturbed(base: RopeScaling, count: int, generator: torch.Generator) -> list[RopeScaling]:
    """``count`` distinct candidates near ``base`` (each factor times 1 + U(0, 0.05))."""
    out = []
    for _ in range(count):
        noise = (1 + 0.05 * torch.rand(len(base.factors), generator=generator)).tolist()
        out.append(
            RopeScaling(**{**base.to_dict(), "factors": [f * n for f, n in zip(base.factors, noise, strict=True)]})
        )
    return out


def timed(fn) -> float:
    torch.cuda.synchronize()
    began = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - began


def naive_scores(model, windows: torch.Tensor, scalings: list[RopeScaling]) -> None:
    """The baseline: transformers' own loss over full logits, one candidate and one window per forward."""
    for scaling in scalings:
        apply_scaling(model, scaling)
        for row in windows:
            ids = row[None].cuda()
            with torch.inference_mode():
                model(ids, labels=ids).loss.item()


def measure_engine(args, source, layout, length: int) -> dict:
    request = SearchRequest(args.model, "dcis", (), args.corpus, 0, samples=args.samples)
    prepared = prepare_model(args.model, None, device="cuda", dtype="bf16", layout=(source, layout))
    model, count = prepared.model, args.candidates
    windows = search_windows(prepared.tokenizer, request, length)
    base = METHODS.get("yarn").run(layout, length, METHODS.get("yarn").params())
    generator = torch.Generator().manual_seed(0)
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    result = {"length": length, "samples": args.samples, "candidates": count}
    for backend in ("auto", "flash", "default"):
        options = EngineOptions(sdpa_backend=backend, candidates_per_batch=count)
        engine = PerplexityEngine([(model, "cuda")], windows, unscaled, options)
        engine(perturbed(base, count, generator))  # warm-up, cuDNN plans
        batch = perturbed(base, count, generator)
        result[f"engine_{backend}_s_per_candidate"] = timed(lambda engine=engine, batch=batch: engine(batch)) / count
    del model, prepared
    torch.cuda.empty_cache()
    naive_model = prepare_model(args.model, None, device="cuda", dtype="bf16", layout=(source, layout)).model
    try:
        naive_scores(naive_model, windows, perturbed(base, 1, generator))  # warm-up
        batch = perturbed(base, count, generator)
        result["naive_s_per_candidate"] = (
            timed(lambda model=naive_model, batch=batch: naive_scores(model, windows, batch)) / count
        )
    except torch.OutOfMemoryError:
        result["naive_s_per_candidate"] = None
    config = naive_model.config
    params = sum(p.numel() for p in naive_model.parameters())
    tokens = args.samples * length
    best = result["engine_auto_s_per_candidate"]
    result["engine_tokens_per_s"] = tokens / best
    result["tflops"] = forward_flops_per_token(config, length, params) * tokens / best / 1e12
    result["mfu"] = result["tflops"] / H100_DENSE_BF16_TFLOPS
    if result["naive_s_per_candidate"]:
        result["speedup_vs_naive"] = result["naive_s_per_candidate"] / best
    return result


def engine_stage(args) -> None:
    source, layout = load_layout(args.model)
    rows = []
    for length in parse_lengths(args.engine_lengths, "--engine-lengths"):
        rows.append(measure_engine(args, source, layout, length))
        print(json.dumps(rows[-1]), flush=True)
    (args.out_dir / "engine.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        f"{torch.cuda.get_device_name()}, {args.model}, bf16; {args.samples} windows per candidate, "
        f"{args.candidates} candidates per call; s/cand = seconds per candidate",
        "",
        "| length | engine s/cand (cuDNN first) | flash only | PyTorch default | naive s/cand | speed-up "
        "| tokens/s | TFLOP/s | of bf16 peak |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        naive_s = f"{r['naive_s_per_candidate']:.3f}" if r["naive_s_per_candidate"] else "OOM"
        speedup = f"{r['speedup_vs_naive']:.2f}x" if r.get("speedup_vs_naive") else "-"
        lines.append(
            f"| {format_length(r['length'])} | {r['engine_auto_s_per_candidate']:.3f} "
            f"| {r['engine_flash_s_per_candidate']:.3f} | {r['engine_default_s_per_candidate']:.3f} | {naive_s} "
            f"| {speedup} | {r['engine_tokens_per_s']:.0f} | {r['tflops']:.1f} | {100 * r['mfu']:.1f}% |"
        )
    (args.out_dir / "engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def search_stage(args) -> None:
    source, layout = load_layout(args.model)
    for target in parse_lengths(args.targets, "--targets"):
        for searcher in args.searchers.split(","):
            out = args.out_dir / f"{searcher}-{format_length(target)}.yaml"
            if out.exists():
                print(f"{out} exists; skipping", flush=True)
                continue
            budget = args.longrope_budget if searcher == "longrope" else None
            request = SearchRequest(
                model=args.model,
                searcher=searcher,
                params=tuple(args.param or ()),
                corpus=args.corpus,
                target_length=target,
                samples=args.samples,
                budget=budget,
                seed=args.seed,
                critical_floor=args.critical_floor,
                race=args.race,
                race_margin=args.race_margin,
            )
            journal = out.with_name(out.name + ".journal.jsonl")

            def progress(done: int, expected: int, best: float, label=out.name) -> None:
                if done % 10 == 0:
                    print(f"{label}: {done}/{expected} evaluations, best ppl {best:.4f}", flush=True)

            scaling = run_search(request, source, layout, journal, progress)
            scaling.save(out)
            prov = scaling.provenance
            print(f"wrote {out}: score {prov['score']:.4f}, {prov['evaluations']} evaluations", flush=True)


def eval_stage(args) -> None:
    lines = []
    for target in parse_lengths(args.targets, "--targets"):
        searched = sorted(str(p) for p in args.out_dir.glob(f"*-{format_length(target)}.yaml"))
        methods = ["none", "pi", "ntk", "yarn", "dprope:t=0.001", *searched]
        ppl = PerplexityOptions(
            corpus=args.corpus,
            lengths=tuple(parse_lengths(args.lengths)),
            max_docs=args.eval_docs,
            skip_docs=args.samples,
        )
        passkey = PasskeyOptions(lengths=(target,), depths=FIXED_DEPTHS, trials=args.trials)
        summary = compare_methods(
            args.model, methods, target, ppl, passkey, args.out_dir / f"eval-{format_length(target)}"
        )
        lines += [
            f"## 8k -> {format_length(target)}",
            "",
            markdown_table(summary, "ppl", "ppl"),
            "",
            "Passkey at the target:",
            "",
            markdown_table(summary, "passkey", "accuracy"),
            "",
        ]
        for path in searched:
            prov = RopeScaling.load(path).provenance
            lines.append(
                f"- {Path(path).stem}: {prov['evaluations']} evaluations, {prov['seconds']:.0f} s, "
                f"search ppl {prov['score']:.4f}{' (stopped at budget)' if prov.get('stopped_by_budget') else ''}"
            )
        lines.append("")
    (args.out_dir / "eval.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("engine", "search", "eval"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=5, help="documents the search uses (eval skips them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="32k,64k")
    parser.add_argument("--searchers", default="dcis,longrope")
    parser.add_argument("--param", action="append", help="searcher parameter k=v (all searchers)")
    parser.add_argument("--longrope-budget", type=int, default=None)
    parser.add_argument(
        "--no-critical-floor", dest="critical_floor", action="store_false",
        help="search without the critical floor (how bench/results/search-h100 was made)",
    )  # fmt: skip
    parser.add_argument(
        "--race", action=argparse.BooleanOptionalAction, default=RACE_BY_DEFAULT,
        help="racing (ropext search --race); the committed searches ran without it",
    )  # fmt: skip
    parser.add_argument("--race-margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--lengths", default="8k,16k,32k,64k")
    parser.add_argument("--eval-docs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--engine-lengths", default="8k,32k,64k")
    parser.add_argument("--candidates", type=int, default=8)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    {"engine": engine_stage, "search": search_stage, "eval": eval_stage}[args.stage](args)


if __name__ == "__main__":
    main()
