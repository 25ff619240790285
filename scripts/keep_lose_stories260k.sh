#!/usr/bin/env bash
# Regenerates the "What the students keep and lose" section of docs/results.md (issue 17).
# usage: bash scripts/keep_lose_stories260k.sh [RUNS_DIR]      (needs ../shared beside the checkout)
# 1. trains the students of that section with the recipes of the earlier sections (finished runs are skipped,
#    killed ones resumed); 2. scores each with the evaluation suite (recall probes, context length, lm-eval on
#    tasks generated from the test split), teacher and no-mixing baseline beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/keep_lose
export OMP_NUM_THREADS=1
T=../shared/teachers/stories260K
D=../shared/corpora/tinystories/stories.txt
mkdir -p "$R"
train() {  # train NAME COMMAND [flags]: one run into $R/NAME unless it is finished
  local name=$1 cmd=$2; shift 2
  [ -f "$R/$name/metrics.json" ] && return 0
  local resume=(); [ -d "$R/$name/checkpoint" ] && resume=(--resume)
  wavedistill "$cmd" --teacher $T --data $D --output-dir "$R/$name" "${resume[@]}" "$@" > "$R/$name.log" 2>&1
}
TKD=(--recipe configs/transfer_kd.yaml)  # transfer 500 (lr 0.01) -> kd 1,500: 2,000 steps of 16 x 256 tokens
FD='{"feature_dim": 64}'
# The students, each with the recipe its earlier section reports (docs/results.md).
train learned_gate distill "${TKD[@]}" --wave-type learned_gate &
train frequency_band distill --wave-type frequency_band --max-steps 2000 --batch-size 16 --seq-len 256 &
wait
train rotary_gla distill "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs "$FD" --alpha 1.0 &
train gated_delta_net distill "${TKD[@]}" --wave-type gated_delta_net &
wait
train hybrid16 distill "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs '{"window": 16, "feature_dim": 64}' --alpha 1.0 &
train compressed_attention kd --student compressed --max-steps 800 --batch-size 16 --seq-len 256 --lr 3e-3 \
  --alpha 0.9 --eval-every 100 --save-every 200 --seed 0 &
wait
