#!/usr/bin/env bash
# Which layers keep softmax attention (issue 20, section 1): the greedy val-KL choice of
# `wavedistill layers --select-keep` against uniform and last-layer choices, each hybrid trained alike
# (configs/transfer_kd_500.yaml: 500 steps of 16 x 256, rotary_gla feature_dim 64, pure KL, seed 0) and scored on test.
# usage: bash scripts/select_keep_stories260k.sh [RUNS_DIR]     (needs ../shared; ~1 hour on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/select_keep
export OMP_NUM_THREADS=1
mkdir -p "$R"
FD='{"feature_dim": 64}'
train() {  # train NAME [flags]: one hybrid into $R/NAME unless it is finished
  local name=$1; shift
  [ -f "$R/$name/metrics.json" ] && return 0
  local resume=(); [ -d "$R/$name/checkpoint" ] && resume=(--resume)
  wavedistill distill --recipe configs/transfer_kd_500.yaml --wave-type rotary_gla --mixer-kwargs "$FD" --kl-weight 1.0 --ce-weight 0 \
      --output-dir "$R/$name" "${resume[@]}" "$@" > "$R/$name.log" 2>&1
}
# 1. The choice, on val, from the all-layers student of docs/results.md (runs/keep_lose/rotary_gla, 2,000 steps).
[ -f "$R/selection/layers.json" ] || wavedistill layers --from-run "${1:-runs}/keep_lose/rotary_gla" --select-keep 2 \
    --output-dir "$R/selection" > "$R/selection.log" 2>&1
K1=$(python -c "import json; print(json.load(open('$R/selection/layers.json'))['selection'][1]['kept'][0])")
K2=$(cat "$R/selection/keep_attention.txt")
# 2. Hybrids trained alike: K = 1 and 2, chosen vs uniform (middle / evenly spaced) vs last layers; and none kept.
train none &
train k1_chosen --keep-attention "$K1" &
wait
train k1_uniform --keep-attention 2 &
train k1_last --keep-attention 4 &
wait
train k2_chosen --keep-attention "$K2" &
train k2_uniform --keep-attention 1,3 &
wait
train k2_last --keep-attention 3,4
wavedistill report "$R"/{none,k1_chosen,k1_uniform,k1_last,k2_chosen,k2_uniform,k2_last} > "$R/report.md"
cat "$R/report.md"
# 3. The same hybrids on the whole val split (where the choice was made), beside test.
for r in none k1_chosen k1_last k2_chosen k2_last; do
  [ -f "$R/${r}_val/metrics.json" ] || wavedistill eval --student "$R/$r" --split val --output-dir "$R/${r}_val" > /dev/null
  python -c "import json; m = json.load(open('$R/${r}_val/metrics.json')); print('$r val top-5', round(m['top5_overlap'], 3), 'KL', round(m['kl'], 4), m['positions'], 'positions')"
done
