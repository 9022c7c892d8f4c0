#!/usr/bin/env bash
# Retrieval at the target (docs/results.md, "Retrieval at the target"): SmolLM2-135M 8k -> 64k, fine-tuned
# at 8k for 200 steps x 32k tokens (6.6M tokens) plainly, with PoSE and with mixed windows, against the
# untuned scalings and the model as it is. Each group is one GPU's work; every stage resumes (a fine-tune
# interrupted with SIGINT continues from its checkpoint), so a group cut short is rerun as it was.
#
#   bench/retrieval_matrix.sh GROUP [DATA_DIR] [WORK_DIR]
#     GROUP     finetune-dcis (plain and PoSE) | finetune-mixed (the model, the untuned scalings, mixed windows)
#               | needle (DCIS with the needle objective, then its evaluation) | summary (every row measured)
#               | v2-pose | v2-short | v2-summary (round 2, below)
#               | v3-128k | v3-ruler | v3-more | v3-summary (round 3, below) | v4-kinds (round 4, to be run)
#     DATA_DIR  folder with books-dev.jsonl.gz and proofs-dev.jsonl.gz (default .device/data)
#     WORK_DIR  where fine-tuned models go (default /tmp/ropext-models)
set -euo pipefail
group=$1 data=${2:-.device/data} work=${3:-/tmp/ropext-models}
dcis=bench/results/search-h100/dcis-64k.yaml
dcis_a1=bench/results/retrieval-h200/dcis-64k-a1.yaml  # bench/scaling_variant.py: a = 1, short factors = 1
needle=bench/results/retrieval-h200/dcis-64k-needle.yaml
common=(
  --corpus "$data/books-dev.jsonl.gz" --second-corpus "proofs=$data/proofs-dev.jsonl.gz"
  --train-lengths 8k --tokens-per-step 32k --steps 200 --short-share 0.25
  --eval-lengths 8k,16k,32k,64k --eval-skip 5 --eval-docs 10 --train-skip 15
  --passkey-lengths 32k,64k --trials 4 --depths 0,0.25,0.5,0.75,1
  --ruler-tasks niah_single_1,niah_single_2 --ruler-lengths 32k,64k --ruler-samples 20
  --out-dir bench/results/retrieval-h200 --work-dir "$work"
)
kept=bench/results/retrieval-v2-h200/dcis-64k-kept.yaml  # ropext search --keep-short-context
v2=(
  --corpus "$data/books-dev.jsonl.gz" --second-corpus "proofs=$data/proofs-dev.jsonl.gz"
  --train-lengths 8k --tokens-per-step 32k --steps 200 --short-share 0.25 --needle-share 0.25
  --eval-lengths 8k,16k,32k,64k --eval-skip 5 --eval-docs 10 --train-skip 15
  --passkey-lengths 32k,64k --trials 20 --depths spread
  --ruler-tasks niah_single_1,niah_single_2 --ruler-lengths 32k,64k --ruler-samples 20
  --out-dir bench/results/retrieval-v2-h200 --work-dir "$work"
)
kept128=bench/results/retrieval-v3-h200/dcis-128k-kept.yaml  # search --keep-short-context, 2 documents, racing
v3=(
  --corpus "$data/books-dev.jsonl.gz" --second-corpus "proofs=$data/proofs-dev.jsonl.gz"
  --train-lengths 8k --tokens-per-step 32k --steps 200 --short-share 0.25 --needle-share 0.25
  --eval-lengths 8k,16k,32k,64k,128k --eval-skip 5 --eval-docs 10 --train-skip 15
  --passkey-lengths 32k,64k,128k --trials 20 --depths spread
  --ruler-tasks niah_single_1,niah_single_2 --ruler-lengths 64k,128k --ruler-samples 20 --ruler-batch 10
  --out-dir bench/results/retrieval-v3-h200 --work-dir "$work"
)
ruler_best=bench/results/retrieval-v3-h200/ruler-dcis-64k-kept-mixed-needles.json
mkdir -p bench/results/retrieval-v2-h200 bench/results/retrieval-v3-h200
case $group in
  finetune-dcis) python3 bench/finetune_quality.py "${common[@]}" --factors "dcis-64k=$dcis" --modes plain,pose --no-untuned ;;
  finetune-mixed)
    python3 bench/finetune_quality.py "${common[@]}" --factors original=none --factors "dcis-64k=$dcis" \
      --factors "dcis-64k-a1=$dcis_a1" --modes mixed ;;
  needle)
    python3 -m ropext search --model smollm2-135m --method dcis -t 64k --objective needle \
      --corpus "$data/books-dev.jsonl.gz" --samples 5 --out "$needle"
    python3 bench/finetune_quality.py "${common[@]}" --factors "dcis-64k-needle=$needle" --modes none ;;
  summary)
    python3 bench/finetune_quality.py "${common[@]}" --factors original=none --factors "dcis-64k=$dcis" \
      --factors "dcis-64k-a1=$dcis_a1" --factors "dcis-64k-needle=$needle" --modes plain,pose,mixed --summary-only ;;
  # Round 2 (to be run): PoSE with attention across the skip, retrieval practice, DCIS searched with
  # --keep-short-context, passkey prompts spread over depths (20 per length); results in retrieval-v2-h200.
  v2-pose)
    # the model as it is retrieves nothing past 8k (round 1): its row stays in retrieval-h200
    python3 bench/finetune_quality.py "${v2[@]}" --factors "dcis-64k=$dcis" --modes plain,pose,pose-needles ;;
  v2-short)
    [ -f "$kept" ] || python3 -m ropext search --model smollm2-135m --method dcis -t 64k --keep-short-context \
      --corpus "$data/books-dev.jsonl.gz" --samples 5 --out "$kept"
    python3 bench/finetune_quality.py "${v2[@]}" --factors "dcis-64k-kept=$kept" --modes mixed,mixed-needles ;;
  v2-summary)
    python3 bench/finetune_quality.py "${v2[@]}" --factors "dcis-64k=$dcis" --factors "dcis-64k-kept=$kept" \
      --modes plain,pose,pose-needles,mixed,mixed-needles --summary-only ;;
  # Round 3 (to be run): the round-2 recipe (search --keep-short-context, then mixed windows + retrieval
  # practice) for 8k -> 128k; RULER's 11 tasks on round 2's best 64k fine-tune; more practice within 10M tokens.
  v3-128k)
    [ -f "$kept128" ] || python3 -m ropext search --model smollm2-135m --method dcis -t 128k --keep-short-context \
      --corpus "$data/books-dev.jsonl.gz" --samples 2 --race --out "$kept128"
    python3 bench/finetune_quality.py "${v3[@]}" --factors "dcis-128k-kept=$kept128" --modes mixed-needles --no-untuned ;;
  v3-ruler)
    # the fine-tune again (same command, seed and data as round 2: the models were not kept), then all of RULER
    python3 bench/finetune_quality.py "${v2[@]}" --factors "dcis-64k-kept=$kept" --modes mixed-needles --no-untuned \
      --train-only
    python3 -m ropext eval ruler --model "$work/dcis-64k-kept-ft8k-mixed-needles" --lengths 8k,32k,64k \
      --samples 20 --batch-size 20 --json "$ruler_best" ;;
  v3-more)
    # 300 steps (9.8M tokens) with practice in half the windows
    python3 bench/finetune_quality.py "${v2[@]}" --factors "dcis-64k-kept=$kept" --modes mixed-needles \
      --no-untuned --steps 300 --needle-share 0.5 --out-dir bench/results/retrieval-v3-more-h200 --work-dir "$work/more" ;;
  v3-summary)
    python3 bench/finetune_quality.py "${v3[@]}" --factors "dcis-128k-kept=$kept128" --modes mixed-needles --no-untuned \
      --summary-only
    python3 bench/finetune_quality.py "${v2[@]}" --factors "dcis-64k-kept=$kept" --modes mixed-needles --no-untuned \
      --steps 300 --needle-share 0.5 --out-dir bench/results/retrieval-v3-more-h200 --work-dir "$work/more" --summary-only ;;
  # Round 4 (to be run): practice of three kinds (finetune --practice) against round 3's RULER at 64k
  v4-kinds)
    python3 bench/finetune_quality.py "${v2[@]}" --factors "dcis-64k-kept=$kept" --modes mixed-needles --no-untuned \
      --practice single,multi-query,multi-value --out-dir bench/results/retrieval-v4-h200 --work-dir "$work/kinds"
    python3 -m ropext eval ruler --model "$work/kinds/dcis-64k-kept-ft8k-mixed-needles-single+multi-query+multi-value" \
      --lengths 8k,64k --samples 20 --batch-size 20 \
      --json bench/results/retrieval-v4-h200/ruler-dcis-64k-kept-mixed-needles-kinds.json ;;
  *) echo "unknown group $group: finetune-dcis, finetune-mixed, needle, summary, v2-pose, v2-short, v2-summary," \
       "v3-128k, v3-ruler, v3-more, v3-summary or v4-kinds" >&2
     exit 2 ;;
esac
