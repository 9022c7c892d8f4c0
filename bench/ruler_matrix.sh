#!/usr/bin/env bash
# RULER with RULER's own prompts (docs/ruler.md) for SmolLM2-135M: the original model, YaRN-64k and the
# searched DCIS-64k factors. One scaling per call, so several GPUs each take one; results resume, so a
# call cut short is rerun as it was.
#
#   bench/ruler_matrix.sh NAME LENGTHS [BATCH] [OUT_DIR]
#     NAME     original | yarn-64k | dcis-64k
#     LENGTHS  e.g. 4k,8k,16k,32k
#     BATCH    prompts generated together (default 50; 25 keeps 64k within one H200 with room to spare)
#     OUT_DIR  default bench/results/ruler-h200
#
# docs/results.md ("RULER with RULER's prompts") lists the calls that made the committed results.
set -euo pipefail
name=$1 lengths=$2 batch=${3:-50} out=${4:-bench/results/ruler-h200}
case $name in
  original) scaling=() ;;
  yarn-64k) scaling=(--method yarn -t 64k) ;;
  dcis-64k) scaling=(--factors bench/results/search-h100/dcis-64k.yaml) ;;
  *) echo "unknown scaling $name: original, yarn-64k or dcis-64k" >&2; exit 2 ;;
esac
mkdir -p "$out"
python3 -m ropext eval ruler --model smollm2-135m "${scaling[@]}" --lengths "$lengths" --samples 50 \
  --batch-size "$batch" --json "$out/ruler-$name.json"
