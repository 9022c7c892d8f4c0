#!/usr/bin/env bash
# Issue 13's GPU measurements. One group per GPU; every stage resumes (result files, search journals, fine-tune
# checkpoints, the summaries below), so a group cut short is rerun as it was and does only what is missing.
# Measured (bench/results/long-context-h200; docs/results.md): ulysses (both rows), engine-7b, gemma-closed,
# gemma-dcis and gemma-dcis-untuned (2 x H200). Not yet measured: gemma-ulysses (its first run was cut short).
#
#   bench/long_context_matrix.sh GROUP [DATA_DIR] [WORK_DIR]
#     gemma-closed  gemma3-270m as it is and with YaRN 32k -> 128k: perplexity (books, proofs), passkey, RULER
#     gemma-dcis    DCIS 32k -> 128k on gemma3-270m with --keep-short-context (2 documents, racing), then the
#                   same evaluation after a fine-tune at 16k with finetune's defaults for these
#                   factors (PoSE to 128k, a quarter of the windows at short positions, retrieval practice in a
#                   quarter; 200 steps x 32k tokens = 6.6M tokens)
#     gemma-dcis-untuned  the factors gemma-dcis searched, evaluated as they are (a second GPU can run it while
#                   gemma-dcis fine-tunes)
#     gemma-summary one summary.md of every gemma row measured so far (the gemma groups end with it)
#     ulysses       a 7B Llama-2 shape (random weights) fine-tuned at 64k and 128k on two GPUs, with and without
#                   --sequence-parallel 2: tokens/s per GPU, MFU, peak memory (or the out-of-memory it hits)
#     gemma-ulysses gemma3-270m fine-tuned at 128k on two GPUs, with and without --sequence-parallel 2 (its 4
#                   heads and 1 key/value head allow 2): tokens/s per GPU, MFU, peak memory
#     engine-7b     the search engine's seconds per candidate for the 7B shape at 32k, 64k, 128k on one GPU
#     DATA_DIR  folder with books-dev.jsonl.gz and proofs-dev.jsonl.gz (default .device/data)
#     WORK_DIR  models and scratch (default /tmp/ropext-long)
set -euo pipefail
group=$1 data=${2:-.device/data} work=${3:-/tmp/ropext-long}
out=bench/results/long-context-h200
mkdir -p "$out" "$work"
# whether a finetune_throughput summary json already has a result for every length: complete JSON LENGTHS GPUS
complete() {
  python3 -c 'import sys; sys.path.insert(0, "bench"); from finetune_throughput import summary_complete as done
sys.exit(0 if done(*sys.argv[1:]) else 1)' "$@"
}
gemma=(
  --model gemma3-270m --corpus "$data/books-dev.jsonl.gz" --second-corpus "proofs=$data/proofs-dev.jsonl.gz"
  --train-lengths 16k --tokens-per-step 32k --steps 200
  --eval-lengths 8k,32k,64k,128k --eval-skip 3 --eval-docs 8 --train-skip 11
  --passkey-lengths 64k,128k --trials 20 --depths spread
  --ruler-tasks niah_single_1,niah_single_2,niah_multikey_1,vt,fwe --ruler-lengths 32k,128k --ruler-samples 20
  --out-dir "$out" --work-dir "$work/models"
)
case $group in
  gemma-closed)
    python3 bench/finetune_quality.py "${gemma[@]}" --factors original=none --factors yarn-128k=yarn:128k --modes none
    bash "$0" gemma-summary "$data" "$work" ;;
  gemma-dcis)
    # the recipe of issue 12 (docs/results.md, rounds 2-3): short context kept, then mixed windows + practice.
    # levels=5 stops DCIS at groups of 4 of Gemma's 128 pairs (187 evaluations instead of 769), to fit the GPU time
    [ -f "$out/gemma-dcis-128k-kept.yaml" ] || python3 -m ropext search --model gemma3-270m --method dcis -t 128k \
      --keep-short-context --param levels=5 --corpus "$data/books-dev.jsonl.gz" --samples 2 --race \
      --out "$out/gemma-dcis-128k-kept.yaml"
    python3 bench/finetune_quality.py "${gemma[@]}" --factors "dcis-128k-kept=$out/gemma-dcis-128k-kept.yaml" \
      --modes mixed-needles
    bash "$0" gemma-summary "$data" "$work" ;;
  gemma-dcis-untuned)
    # the searched factors without fine-tuning; on a second GPU while gemma-dcis fine-tunes
    [ -f "$out/gemma-dcis-128k-kept.yaml" ] || { echo "run gemma-dcis first: it searches the factors" >&2; exit 2; }
    python3 bench/finetune_quality.py "${gemma[@]}" --factors "dcis-128k-kept=$out/gemma-dcis-128k-kept.yaml" \
      --untuned --modes none
    bash "$0" gemma-summary "$data" "$work" ;;
  gemma-summary)
    # one table of every Gemma row measured so far (each group above rewrites summary.md with its own rows)
    python3 bench/finetune_quality.py "${gemma[@]}" --factors original=none --factors yarn-128k=yarn:128k \
      --factors "dcis-128k-kept=$out/gemma-dcis-128k-kept.yaml" --untuned --modes mixed-needles --summary-only ;;
  ulysses)
    for sp in 2 1; do
      if complete "$out/ulysses-7b-sp$sp.json" 64k,128k 2; then
        echo "ulysses: $out/ulysses-7b-sp$sp.json has 64k and 128k; skipping --sequence-parallel $sp"; continue
      fi
      [ -d "$work/l7b" ] || python3 bench/model_shape.py llama2-7b --out "$work/l7b"
      [ -f "$work/l7b-yarn-128k.yaml" ] || python3 -m ropext search --model "$work/l7b" --method yarn -t 128k \
        --out "$work/l7b-yarn-128k.yaml"
      python3 bench/finetune_throughput.py --model "$work/l7b" --factors "$work/l7b-yarn-128k.yaml" \
        --corpus "$data/books-dev.jsonl.gz" --lengths 64k,128k --steps 6 --gpus 2 --out-dir "$work/ft-sp$sp" \
        --summary "$out/ulysses-7b-sp$sp.md" -- --init random --no-save-model --sequence-parallel "$sp" || true
    done ;;
  gemma-ulysses)
    [ -f "$work/gemma-yarn-128k.yaml" ] || python3 -m ropext search --model gemma3-270m --method yarn -t 128k \
      --out "$work/gemma-yarn-128k.yaml"
    for sp in 2 1; do
      if complete "$out/gemma-ulysses-sp$sp.json" 128k 2; then
        echo "gemma-ulysses: $out/gemma-ulysses-sp$sp.json has 128k; skipping --sequence-parallel $sp"; continue
      fi
      python3 bench/finetune_throughput.py --model gemma3-270m --factors "$work/gemma-yarn-128k.yaml" \
        --corpus "$data/books-dev.jsonl.gz" --lengths 128k --steps 6 --gpus 2 --out-dir "$work/gemma-ft-sp$sp" \
        --summary "$out/gemma-ulysses-sp$sp.md" -- --no-save-model --sequence-parallel "$sp" || true
    done ;;
  engine-7b)
    [ -d "$work/l7b" ] || python3 bench/model_shape.py llama2-7b --out "$work/l7b"
    python3 bench/search.py engine --model "$work/l7b" --corpus "$data/books-dev.jsonl.gz" --out-dir "$out/engine-7b" \
      --init random --samples 1 --candidates 2 --backends auto --no-naive --engine-lengths 32k,64k,128k ;;
  *) echo "unknown group $group: gemma-closed, gemma-dcis, gemma-dcis-untuned, gemma-summary, ulysses, gemma-ulysses or engine-7b" >&2
     exit 2 ;;
esac
