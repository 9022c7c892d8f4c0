"""Does fine-tuning at a short length carry to the target? Each scaling is fine-tuned at every train length
for the same number of tokens (same steps, same tokens per step), then every model — and each scaling
without fine-tuning — is evaluated on documents the training did not see.

    python bench/finetune_quality.py --corpus ../shared/corpora/books-dev.jsonl.gz \
        --factors longrope-32k=bench/results/search-h100/longrope-32k.yaml --factors yarn-32k=yarn:32k \
        --train-lengths 8k,32k --tokens-per-step 32k --steps 120 --out-dir bench/results/finetune-quality-h100

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
    parser.add_argument("--passkey-length", default="32k")
    parser.add_argument("--trials", type=int, default=4, help="passkey keys per depth (5 depths)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=None, help="where models go (default: --out-dir/models)")
    args = parser.parse_args()
    if args.eval_skip + args.eval_docs > args.train_skip:
        parser.error("--train-skip must be at least --eval-skip + --eval-docs so that training skips evaluation")

    from ropext.lengths import format_length, parse_length, parse_lengths

    longest = max(parse_lengths(args.eval_lengths, "--eval-lengths"))
    work = args.work_dir or args.out_dir / "models"
    factors = dict(_named(spec, work, args.model) for spec in args.factors)
    runs: list[tuple[str, str, str]] = []  # (row name, model, factors file or "")
    for name, path in factors.items():
        runs.append((f"{name}, no fine-tune", args.model, str(path)))
        for length in parse_lengths(args.train_lengths, "--train-lengths"):
            out = work / f"{name}-ft{format_length(length)}"
            _finetune(args, path, length, out, longest)
            runs.append((f"{name}, fine-tuned at {format_length(length)}", str(out), ""))
    rows = []
    for name, model, path in runs:
        results = args.out_dir / _slug(name)
        _evaluate(args, model, path, results)
        rows.append((name, _read(results / "ppl.json"), _read(results / "passkey.json")))
    _summary(
        args,
        rows,
        parse_lengths(args.eval_lengths, "--eval-lengths"),
        parse_length(args.passkey_length, "--passkey-length"),
    )


def _named(spec: str, work: Path, model: str) -> tuple[str, Path]:
    name, _, value = spec.partition("=")
    if not value:
        sys.exit(f"error: --factors {spec!r}: write NAME=FILE.yaml or NAME=METHOD:TARGET")
    if value.endswith((".yaml", ".yml")):
        return name, Path(value)
    method, _, target = value.partition(":")
    path = work / f"{name}.yaml"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        _ropext("search", "--model", model, "--method", method, "-t", target, "--out", path)
    return name, path


def _finetune(args: argparse.Namespace, factors: Path, length: int, out: Path, longest: int) -> None:
    from ropext.lengths import parse_length

    if (out / "config.json").is_file():
        print(f"{out}: fine-tuned already", flush=True)
        return
    if out.exists():
        shutil.rmtree(out)  # an unfinished run (no checkpoints are kept here): start it over
    batch = parse_length(args.tokens_per_step, "--tokens-per-step")
    if batch % length:
        sys.exit(f"error: --tokens-per-step {args.tokens_per_step} is not a multiple of train length {length}")
    lr = ["--lr", args.lr] if args.lr else []
    _ropext(
        "finetune", "--model", args.model, "--factors", factors, "--corpus", args.corpus,
        "--train-length", str(length), "--batch-tokens", str(batch), "--steps", str(args.steps),
        "--skip-docs", str(args.train_skip), "--skip-length", str(longest), "--out", out, *lr,
    )  # fmt: skip


def _evaluate(args: argparse.Namespace, model: str, factors: str, results: Path) -> None:
    if (results / "ppl.json").is_file() and (results / "passkey.json").is_file():
        print(f"{results}: evaluated already", flush=True)
        return
    scaling = ["--factors", factors] if factors else []
    _ropext(
        "eval", "run", "--model", model, *scaling, "--tasks", "ppl,passkey", "--lengths", args.eval_lengths,
        "--passkey-lengths", args.passkey_length, "--corpus", args.corpus, "--skip-docs", str(args.eval_skip),
        "--max-docs", str(args.eval_docs), "--trials", str(args.trials), "--json-dir", results,
    )  # fmt: skip


def _ropext(*arguments: object) -> None:
    command = [sys.executable, "-m", "ropext", *map(str, arguments)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")


def _read(path: Path) -> dict:
    return json.loads(path.read_text())["results"]


def _summary(args: argparse.Namespace, rows: list, lengths: list[int], passkey_length: int) -> None:
    from ropext.lengths import format_length

    head = " | ".join(format_length(n) for n in lengths)
    lines = [
        f"`{' '.join(sys.argv)}`",
        "",
        f"| model | {head} | passkey {format_length(passkey_length)} |",
        "|---|" + "---:|" * (len(lengths) + 1),
    ]
    for name, ppl, passkey in rows:
        cells = " | ".join(f"{ppl[str(n)]['ppl']:.3f}" if str(n) in ppl else "-" for n in lengths)
        accuracy = passkey.get(str(passkey_length), {}).get("accuracy")
        lines.append(f"| {name} | {cells} | {'-' if accuracy is None else f'{accuracy:.2f}'} |")
    metrics = []
    for folder in sorted((args.work_dir or args.out_dir / "models").glob("*-ft*")):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        if records:
            shutil.copy(folder / "metrics.jsonl", args.out_dir / f"metrics-{folder.name}.jsonl")
            metrics.append(
                f"| {folder.name} | {records[-1]['step']} | {records[-1]['tokens']:,} | {records[0]['loss']:.3f} "
                f"| {records[-1]['loss']:.3f} | {records[-1]['seconds']:.0f} |"
            )
    lines += ["", "| run | steps | tokens | first loss | last loss | training seconds |", "|---|" + "---:|" * 5]
    lines += metrics
    (args.out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
