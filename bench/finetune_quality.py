"""Does fine-tuning at a short length carry to the target? Each scaling is fine-tuned at every train length
for the same number of tokens (same steps, same tokens per step), then every model — and each scaling
without fine-tuning — is evaluated on documents the training did not see.

    python bench/finetune_quality.py --corpus ../shared/corpora/books-dev.jsonl.gz \
        --factors longrope-32k=bench/results/search-h100/longrope-32k.yaml --factors yarn-32k=yarn:32k \
        --train-lengths 8k,32k --tokens-per-step 32k --steps 120 --out-dir bench/results/finetune-quality-h100

Retrieval-aware training (docs/results.md, "Retrieval at the target"): ``--modes plain,pose,mixed`` fine-tunes
every scaling plainly, with PoSE position skipping to its target (``--position-skip``), and with mixed windows
(``--short-share``); ``--second-corpus proofs=FILE`` adds perplexity on a second domain, ``--passkey-lengths``
several passkey lengths, and ``--ruler-tasks`` RULER tasks. ``--practice KINDS`` passes ``ropext finetune
--practice`` to the ``*-needles`` modes (their model folders and rows name the kinds, so runs of other kinds sit
side by side); left out, finetune's default (single) applies. ``--factors original=none`` evaluates the model as it
is; ``--no-untuned`` leaves out the rows without fine-tuning.

Documents: the evaluation uses documents ``eval_skip .. eval_skip + eval_docs - 1`` of at least the longest
evaluated length (the same ones as bench/search.py's evaluations); training starts after document
``train_skip`` (``ropext finetune --skip-docs``), so the two never meet. Every stage resumes: a finished
fine-tune (its config.json written) or evaluation (its result file) is not run again; an unfinished
fine-tune folder is started over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", required=True)
    parser.add_argument(
        "--factors",
        action="append",
        required=True,
        help="NAME=FILE.yaml, or NAME=METHOD:TARGET for a closed-form method (e.g. yarn-32k=yarn:32k)",
    )
    parser.add_argument("--train-lengths", default="8k,32k")
    parser.add_argument("--tokens-per-step", default="32k", help="tokens per optimizer step, every train length")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", default=None, help="learning rate (default: the recipe's 2e-5)")
    parser.add_argument("--train-skip", type=int, default=15, help="documents (of --eval-lengths' longest) skipped")
    parser.add_argument("--eval-skip", type=int, default=5)
    parser.add_argument("--eval-docs", type=int, default=10)
    parser.add_argument("--eval-lengths", default="8k,16k,32k,64k")
    parser.add_argument("--passkey-lengths", "--passkey-length", dest="passkey_lengths", default="32k")
    parser.add_argument("--trials", type=int, default=4, help="passkey prompts per depth (per length when spread)")
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="passkey depths, or spread")
    parser.add_argument(
        "--modes",
        default="plain",
        help="comma-separated: plain, pose, mixed, pose-needles, mixed-needles; none: no fine-tune",
    )
    parser.add_argument("--short-share", default="0.25", help="mixed mode: share of short windows")
    parser.add_argument("--needle-share", default="0.25", help="*-needles modes: share of practice windows")
    parser.add_argument(
        "--practice", default=None, help="*-needles modes: ropext finetune --practice KINDS (default: not passed)"
    )
    parser.add_argument("--second-corpus", default=None, help="NAME=FILE: perplexity on a second domain as well")
    parser.add_argument("--ruler-tasks", default=None, help="RULER tasks to run (default: none)")
    parser.add_argument("--ruler-lengths", default="32k,64k")
    parser.add_argument("--ruler-samples", type=int, default=20)
    parser.add_argument("--ruler-batch", type=int, default=None, help="prompts generated together (default: all)")
    parser.add_argument("--untuned", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--summary-only", action="store_true", help="tabulate the rows already measured; run nothing")
    parser.add_argument(
        "--train-only", action="store_true", help="only the fine-tunes: no evaluation, summary.md left as it is"
    )
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=None, help="where models go (default: --out-dir/models)")
    args = parser.parse_args()
    if args.eval_skip + args.eval_docs > args.train_skip:
        parser.error("--train-skip must be at least --eval-skip + --eval-docs so that training skips evaluation")

    from ropext.lengths import format_length, parse_lengths

    longest = max(parse_lengths(args.eval_lengths, "--eval-lengths"))
    work = args.work_dir or args.out_dir / "models"
    factors = dict(_named(spec, work, args.model) for spec in args.factors)
    modes = [] if args.modes == "none" else args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; the modes are {', '.join(MODES)}")
    runs: list[tuple[str, str, str]] = []  # (row name, model, factors file or "")
    for name, path in factors.items():
        if args.untuned or path is None:
            runs.append((f"{name}, no fine-tune", args.model, "" if path is None else str(path)))
        if path is None:
            continue  # the model as it is: nothing to fine-tune
        for length in parse_lengths(args.train_lengths, "--train-lengths"):
            for mode in modes:
                practice = _practice(args.practice, mode)
                kinds = practice[1:]  # the model folder and the row name the kinds they were trained with
                suffix = ("" if mode == "plain" else f"-{mode}") + "".join(f"-{k.replace(',', '+')}" for k in kinds)
                out = work / f"{name}-ft{format_length(length)}{suffix}"
                if not args.summary_only:
                    _finetune(args, path, length, out, longest, MODES[mode](args, path) + practice)
                label = ("" if mode == "plain" else f", {mode}") + "".join(f", practice {k}" for k in kinds)
                runs.append((f"{name}, fine-tuned at {format_length(length)}{label}", str(out), ""))
    if args.train_only:
        return
    rows = []
    for name, model, path in runs:
        results = args.out_dir / _slug(name)
        if args.summary_only:
            if results.is_dir():
                rows.append((name, results))
            continue
        _evaluate(args, model, path, results)
        rows.append((name, results))
    _summary(args, rows, parse_lengths(args.eval_lengths, "--eval-lengths"))


def _target(path: Path) -> str:
    from ropext.scaling import RopeScaling

    return str(RopeScaling.load(path).max_position_embeddings)


def _windows(position_skip: str, short_share: str, needle_share: str) -> list[str]:
    # Every mode spells out all three options: finetune's defaults (auto) would add what a mode leaves out.
    return ["--position-skip", position_skip, "--short-share", short_share, "--needle-share", needle_share]


MODES = {
    "plain": lambda args, path: _windows("off", "0", "0"),
    # PoSE: windows of the train length whose positions reach the scaling's target
    "pose": lambda args, path: _windows(_target(path), "0", "0"),
    "mixed": lambda args, path: _windows(_target(path), args.short_share, "0"),
    # retrieval practice (--needle-share) on top of PoSE, and of mixed windows
    "pose-needles": lambda args, path: _windows(_target(path), "0", args.needle_share),
    "mixed-needles": lambda args, path: _windows(_target(path), args.short_share, args.needle_share),
}


def _practice(kinds: str | None, mode: str) -> list[str]:
    """``--practice KINDS`` for a mode with retrieval practice, when it was given: finetune refuses kinds in a
    run without practice."""
    if kinds is None or not mode.endswith("-needles"):
        return []
    return ["--practice", kinds.replace(" ", "")]


def _named(spec: str, work: Path, model: str) -> tuple[str, Path | None]:
    name, _, value = spec.partition("=")
    if not value:
        sys.exit(f"error: --factors {spec!r}: write NAME=FILE.yaml, NAME=METHOD:TARGET or NAME=none")
    if value == "none":
        return name, None
    if value.endswith((".yaml", ".yml")):
        return name, Path(value)
    method, _, target = value.partition(":")
    path = work / f"{name}.yaml"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        _ropext("search", "--model", model, "--method", method, "-t", target, "--out", path)
    return name, path


def _finetune(args: argparse.Namespace, factors: Path, length: int, out: Path, longest: int, extra: list[str]) -> None:
    from ropext.lengths import parse_length

    if (out / "config.json").is_file():
        print(f"{out}: fine-tuned already", flush=True)
        return
    from ropext.train.trainer import latest_tag

    resume = []
    if out.exists() and latest_tag(out) is not None:
        resume = ["--resume"]  # interrupted (Ctrl-C saves a checkpoint): continue it
    elif out.exists():
        shutil.rmtree(out)  # an unfinished run without a checkpoint: start it over
    batch = parse_length(args.tokens_per_step, "--tokens-per-step")
    if batch % length:
        sys.exit(f"error: --tokens-per-step {args.tokens_per_step} is not a multiple of train length {length}")
    lr = ["--lr", args.lr] if args.lr else []
    _ropext(
        "finetune", "--model", args.model, "--factors", factors, "--corpus", args.corpus,
        "--train-length", str(length), "--batch-tokens", str(batch), "--steps", str(args.steps),
        "--skip-docs", str(args.train_skip), "--skip-length", str(longest), "--out", out, *lr, *extra, *resume,
    )  # fmt: skip


def _evaluate(args: argparse.Namespace, model: str, factors: str, results: Path) -> None:
    scaling = ["--factors", factors] if factors else []
    tasks = ["ppl", "passkey"] + (["ruler"] if args.ruler_tasks else [])
    if all((results / f"{task}.json").is_file() for task in tasks) and _finished(results, tasks):
        print(f"{results}: evaluated already", flush=True)
    else:
        ruler = []
        if args.ruler_tasks:
            ruler = [
                "--ruler-tasks", args.ruler_tasks, "--ruler-lengths", args.ruler_lengths,
                "--samples", str(args.ruler_samples), "--batch-size", str(args.ruler_batch or args.ruler_samples),
            ]  # fmt: skip
        # eval run resumes each task file, so a rerun after a kill repeats only what was cut short
        _ropext(
            "eval", "run", "--model", model, *scaling, "--tasks", ",".join(tasks), "--lengths", args.eval_lengths,
            "--passkey-lengths", args.passkey_lengths, "--corpus", args.corpus, "--skip-docs", str(args.eval_skip),
            "--max-docs", str(args.eval_docs), "--trials", str(args.trials), "--depths", args.depths, *ruler,
            "--json-dir", results,
        )  # fmt: skip
    if args.second_corpus:
        name, _, corpus = args.second_corpus.partition("=")
        _ropext(
            "eval", "ppl", "--model", model, *scaling, "--lengths", args.eval_lengths, "--corpus", corpus,
            "--skip-docs", str(args.eval_skip), "--max-docs", str(args.eval_docs),
            "--json", results / f"ppl-{name}.json",
        )  # fmt: skip


def _finished(results: Path, tasks: list[str]) -> bool:
    """Every task file holds every length it was asked for (a killed run leaves some out)."""
    for task in tasks:
        data = json.loads((results / f"{task}.json").read_text())
        wanted = data.get("options", {}).get("lengths") or []
        if any(str(n) not in data["results"] for n in wanted):
            return False
    return True


def _ropext(*arguments: object) -> None:
    command = [sys.executable, "-m", "ropext", *map(str, arguments)]
    print(" ".join(command), flush=True)
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # The command got the interrupt too (same process group): let it save its checkpoint or results.
        process.wait()
        sys.exit(130)
    if code:
        sys.exit(code)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")


def _read(path: Path) -> dict:
    return json.loads(path.read_text())["results"] if path.is_file() else {}


def _summary(args: argparse.Namespace, rows: list[tuple[str, Path]], lengths: list[int]) -> None:
    from ropext.lengths import format_length, parse_lengths

    args.out_dir.mkdir(parents=True, exist_ok=True)
    passkey_lengths = parse_lengths(args.passkey_lengths, "--passkey-lengths")
    domains = [("books", "ppl.json")]
    if args.second_corpus:
        name = args.second_corpus.partition("=")[0]
        domains.append((name, f"ppl-{name}.json"))
    heads = [f"{domain} {format_length(n)}" for domain, _ in domains for n in lengths]
    heads += [f"passkey {format_length(n)}" for n in passkey_lengths]
    lines = [f"`{' '.join(sys.argv)}`", "", "| model | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, results in rows:
        cells = []
        for _, file in domains:
            ppl = _read(results / file)
            cells += [f"{ppl[str(n)]['ppl']:.2f}" if str(n) in ppl else "-" for n in lengths]
        passkey = _read(results / "passkey.json")
        cells += [f"{passkey[str(n)]['accuracy']:.2f}" if str(n) in passkey else "-" for n in passkey_lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if args.ruler_tasks:
        ruler_lengths = parse_lengths(args.ruler_lengths, "--ruler-lengths")
        tasks = args.ruler_tasks.split(",")
        heads = [f"{task} {format_length(n)}" for n in ruler_lengths for task in tasks]
        lines += ["", "| model | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for name, results in rows:
            ruler = _read(results / "ruler.json")
            cells = []
            for n in ruler_lengths:
                scores = ruler.get(str(n), {}).get("tasks", {})
                cells += [f"{scores[t]['score']:.2f}" if t in scores else "-" for t in tasks]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for folder in sorted((args.work_dir or args.out_dir / "models").glob("*-ft*")):
        if (folder / "metrics.jsonl").is_file():  # kept beside the results: the models are not
            shutil.copy(folder / "metrics.jsonl", args.out_dir / f"metrics-{folder.name}.jsonl")
    metrics = []
    for path in sorted(args.out_dir.glob("metrics-*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line]
        if records:
            metrics.append(
                f"| {path.stem.removeprefix('metrics-')} | {records[-1]['step']} | {records[-1]['tokens']:,} "
                f"| {records[0]['loss']:.3f} | {records[-1]['loss']:.3f} | {records[-1]['seconds']:.0f} |"
            )
    lines += ["", "| run | steps | tokens | first loss | last loss | training seconds |", "|---|" + "---:|" * 5]
    lines += metrics
    (args.out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
