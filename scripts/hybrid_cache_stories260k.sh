#!/usr/bin/env bash
# Hybrids with a bounded exact cache (issue 20, sections 2 and 4): rotary_gla with a band of the last W keys and
# the first S real tokens (attention sinks) weighed exactly, the linear state for the rest; the standard budget
# (configs/transfer_kd.yaml: 2,000 steps of 16 x 256, pure KL, feature_dim 64, seed 0), then every branch
# switched off in turn on test (`eval --mixer-attrs`): what the linear state, the band and the sinks each add.
# usage: bash scripts/hybrid_cache_stories260k.sh [RUNS_DIR]     (needs ../shared; ~1.5 hours on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/hybrid_cache
export OMP_NUM_THREADS=1
mkdir -p "$R"
train() {  # train NAME MIXER_KWARGS: one hybrid into $R/NAME unless it is finished
  local name=$1 kw=$2
  [ -f "$R/$name/metrics.json" ] && return 0
  local resume=(); [ -d "$R/$name/checkpoint" ] && resume=(--resume)
  wavedistill distill --recipe configs/transfer_kd.yaml --wave-type rotary_gla --mixer-kwargs "$kw" --kl-weight 1.0 --ce-weight 0 \
      --output-dir "$R/$name" "${resume[@]}" > "$R/$name.log" 2>&1
}
ablate() {  # ablate NAME: the trained hybrid with each branch off, on test
  local name=$1
  for off in use_linear use_sinks use_band; do
    [ -f "$R/${name}_no_${off#use_}/metrics.json" ] || wavedistill eval --student "$R/$name" \
        --mixer-attrs "{\"$off\": false}" --output-dir "$R/${name}_no_${off#use_}" >> "$R/$name.ablate.log" 2>&1
  done
}
train w16_s4 '{"window": 16, "sinks": 4, "feature_dim": 64}' &
train w32_s4 '{"window": 32, "sinks": 4, "feature_dim": 64}' &
wait
ablate w16_s4 &
ablate w32_s4 &
wait
wavedistill report "$R"/w16_s4 "$R"/w16_s4_no_{linear,sinks,band} "$R"/w32_s4 "$R"/w32_s4_no_{linear,sinks,band} > "$R/report.md"
cat "$R/report.md"
# Recall probes and context past the training length (the evaluation suite) of both hybrids, then the recall targets
# beside the pure student's (runs/keep_lose/rotary_gla, scripts/keep_lose_stories260k.sh).
for name in w16_s4 w32_s4; do
  [ -f "$R/$name/suite/recall.json" ] || wavedistill eval --student "$R/$name" --suite recall,length > "$R/$name.suite.log" 2>&1 &
done
wait
python scripts/recall_targets.py "${1:-runs}/keep_lose/rotary_gla" "${1:-runs}/keep_lose/hybrid16" "$R"/w16_s4 "$R"/w32_s4
