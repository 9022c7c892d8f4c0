"""Searched factors against the closed-form methods, and the speed of the perplexity engine.

Three stages, each resumable (rerun the same command after a time-out or a kill and it continues):

    # 1. engine: seconds per candidate and tokens/s against a naive evaluation, TFLOP/s, SDPA backends
    python bench/search.py engine --corpus ../shared/corpora/books-dev.jsonl.gz --out-dir bench/results/search-h100
    # the same for a 7B shape with random weights (bench/model_shape.py), cuDNN-first backend only, no naive run
    python bench/search.py engine --model /tmp/l7b --init random --samples 1 --candidates 2 --backends auto \
        --no-naive --engine-lengths 32k,64k,128k --corpus ../shared/corpora/books-dev.jsonl.gz --out-dir /tmp/e7b
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

engine.json and engine.md are rewritten after every length; a rerun skips the lengths engine.json has with the
same --samples, --candidates and --init. A backend (or the naive baseline) that runs out of memory is "OOM" in
its column and the length is still recorded; tokens/s, TFLOP/s and MFU are those of the fastest backend timed.

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
from ropext.model.loading import load_config, load_layout, load_model, load_tokenizer
from ropext.model.sliding_attention import attention_implementation
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


ENGINE_BACKENDS = ("auto", "flash", "default")
"""The SDPA backends ``engine`` can time, in the table's column order: cuDNN first (the engine's default), flash
only, PyTorch's own choice."""


def load_bench_model(source, init: str):
    """The model in bf16 on the GPU, with the attention implementation ``prepare_model`` would pick.

    ``random`` builds it from the folder's config (a config-only folder, bench/model_shape.py) directly on the
    GPU, so a 7B model never materialises 27 GB of float32 weights on the CPU first; random weights time the
    same as trained ones."""
    if init == "pretrained":
        return load_model(source, device="cuda", dtype=torch.bfloat16)
    from transformers import AutoModelForCausalLM

    config = load_config(source)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation=attention_implementation(config)
        )
    return model.eval()


def time_engine(model, windows, unscaled, base, count, backend, generator) -> float | None:
    """Seconds per candidate of one engine call on ``count`` candidates; None when it runs out of memory."""
    try:
        options = EngineOptions(sdpa_backend=backend, candidates_per_batch=count)
        engine = PerplexityEngine([(model, "cuda")], windows, unscaled, options)
        engine(perturbed(base, count, generator))  # warm-up, cuDNN plans
        batch = perturbed(base, count, generator)
        return timed(lambda: engine(batch)) / count
    except torch.OutOfMemoryError:
        return None


def measure_engine(args, source, layout, tokenizer, length: int) -> dict:
    """One row of engine.json: each backend's seconds per candidate (None: out of memory), the naive baseline's
    unless --no-naive, and the throughput of the fastest backend."""
    result = {"length": length, "samples": args.samples, "candidates": args.candidates, "init": args.init}
    count = args.candidates
    request = SearchRequest(args.model, "dcis", (), args.corpus, 0, samples=args.samples)
    windows = search_windows(tokenizer, request, length)
    base = METHODS.get("yarn").run(layout, length, METHODS.get("yarn").params())
    generator = torch.Generator().manual_seed(0)
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    model = load_bench_model(source, args.init)
    config, params = model.config, sum(p.numel() for p in model.parameters())
    for backend in args.backends:
        result[f"engine_{backend}_s_per_candidate"] = time_engine(
            model, windows, unscaled, base, count, backend, generator
        )
        torch.cuda.empty_cache()  # the engine and any half-built batch of an out-of-memory are gone by now
    del model
    torch.cuda.empty_cache()
    if args.naive:
        # a fresh model: the engine leaves its own rotary state behind
        naive_model = load_bench_model(source, args.init)
        try:
            naive_scores(naive_model, windows, perturbed(base, 1, generator))  # warm-up
            batch = perturbed(base, count, generator)
            result["naive_s_per_candidate"] = (
                timed(lambda model=naive_model, batch=batch: naive_scores(model, windows, batch)) / count
            )
        except torch.OutOfMemoryError:
            result["naive_s_per_candidate"] = None
        del naive_model
        torch.cuda.empty_cache()
    measured = [result[f"engine_{b}_s_per_candidate"] for b in args.backends]
    if not any(measured):
        result["oom"] = True
        return result
    best = min(s for s in measured if s)
    tokens = args.samples * length
    result["engine_tokens_per_s"] = tokens / best
    result["tflops"] = forward_flops_per_token(config, length, params) * tokens / best / 1e12
    result["mfu"] = result["tflops"] / H100_DENSE_BF16_TFLOPS
    if result.get("naive_s_per_candidate"):
        result["speedup_vs_naive"] = result["naive_s_per_candidate"] / best
    return result


def out_of_memory_row(args, length: int) -> dict:
    """A length that ran out of memory before any backend was timed (building the model, tokenising)."""
    row = {"length": length, "samples": args.samples, "candidates": args.candidates, "init": args.init, "oom": True}
    row.update({f"engine_{backend}_s_per_candidate": None for backend in args.backends})
    if args.naive:
        row["naive_s_per_candidate"] = None
    return row


def already_measured(rows: list[dict], length: int, samples: int, candidates: int, init: str) -> dict | None:
    """The row of engine.json a rerun keeps for ``length``: one measured with the same windows, candidates and
    weights (an out-of-memory row too: it would run out again; delete it from engine.json to retry)."""
    for row in rows:
        same = (row["samples"], row["candidates"], row.get("init", "pretrained")) == (samples, candidates, init)
        if row["length"] == length and same:
            return row
    return None


def _seconds(row: dict, key: str, digits: int = 3) -> str:
    """A timed column: "-" when this row did not measure it, "OOM" when it ran out of memory."""
    if key not in row:
        return "-"
    return "OOM" if row[key] is None else f"{row[key]:.{digits}f}"


def engine_table(rows: list[dict], header: str) -> str:
    """engine.md: one line per length, every backend's column whether or not this run timed it."""
    lines = [
        header,
        "",
        "| length | engine s/cand (cuDNN first) | flash only | PyTorch default | naive s/cand | speed-up "
        "| tokens/s | TFLOP/s | of bf16 peak |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["length"]):
        timed_columns = [_seconds(r, f"engine_{b}_s_per_candidate") for b in ENGINE_BACKENDS]
        speedup = f"{r['speedup_vs_naive']:.2f}x" if r.get("speedup_vs_naive") else "-"
        if "engine_tokens_per_s" in r:
            rates = [f"{r['engine_tokens_per_s']:.0f}", f"{r['tflops']:.1f}", f"{100 * r['mfu']:.1f}%"]
        else:
            rates = ["-", "-", "-"]
        cells = [format_length(r["length"]), *timed_columns, _seconds(r, "naive_s_per_candidate"), speedup, *rates]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def engine_stage(args) -> None:
    """Times each length in turn; engine.json and engine.md are rewritten after every length, and a rerun keeps
    the lengths engine.json already has, so a run cut short loses only the length it was on."""
    source, layout = load_layout(args.model)
    tokenizer = load_tokenizer(source)
    path = args.out_dir / "engine.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    weights = ", random weights" if args.init == "random" else ""
    header = (
        f"{torch.cuda.get_device_name()}, {args.model}{weights}, bf16; {args.samples} windows per candidate, "
        f"{args.candidates} candidates per call; s/cand = seconds per candidate; OOM = out of memory, "
        "- = not measured"
    )
    for length in parse_lengths(args.engine_lengths, "--engine-lengths"):
        if already_measured(rows, length, args.samples, args.candidates, args.init) is not None:
            print(f"{format_length(length)}: in {path} already; skipping", flush=True)
            continue
        try:
            row = measure_engine(args, source, layout, tokenizer, length)
        except torch.OutOfMemoryError:
            row = None
        if row is None:  # outside the except block, so the failed attempt's tensors are already released
            torch.cuda.empty_cache()
            row = out_of_memory_row(args, length)
        rows = [r for r in rows if r["length"] != length] + [row]
        rows.sort(key=lambda r: r["length"])
        path.write_text(json.dumps(rows, indent=1) + "\n")
        (args.out_dir / "engine.md").write_text(engine_table(rows, header))
        print(json.dumps(row), flush=True)
    print(engine_table(rows, header), end="")


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
    parser.add_argument(
        "--init", choices=("pretrained", "random"), default="pretrained",
        help="engine: the model's weights, or random weights from its config (a config-only folder)",
    )  # fmt: skip
    parser.add_argument(
        "--backends", default=",".join(ENGINE_BACKENDS),
        help=f"engine: the SDPA backends to time, of {', '.join(ENGINE_BACKENDS)}",
    )  # fmt: skip
    parser.add_argument(
        "--naive", action=argparse.BooleanOptionalAction, default=True,
        help="engine: also time transformers' own loss (loads the model a second time)",
    )  # fmt: skip
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(ENGINE_BACKENDS))
    if unknown or not args.backends:
        parser.error(f"--backends takes some of {','.join(ENGINE_BACKENDS)}, got {','.join(unknown) or 'none'}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    {"engine": engine_stage, "search": search_stage, "eval": eval_stage}[args.stage](args)


if __name__ == "__main__":
    main()
