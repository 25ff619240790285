#!/usr/bin/env bash
# How rotary_gla's decay starts (issue 20, section 3). The decay's time constants start log-spaced over
# [min_tau, max_tau] tokens across heads (default 8..512). Two measurements on val, per range:
#  1. untrained, with the exact exp(q.k/sqrt(d)) in place of the feature map (feature_map="softmax"): what the
#     decay alone costs against the teacher before any training;
#  2. the softmax-free student (Hedgehog map, feature_dim 64) after 500 transfer steps (lr 0.01), scored on
#     the whole val split.
# usage: bash scripts/decay_init_stories260k.sh [RUNS_DIR]     (needs ../shared; ~40 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/decay_init
export OMP_NUM_THREADS=1
mkdir -p "$R"
common=(--teacher ../shared/teachers/stories260K --data ../shared/corpora/tinystories/stories.txt
        --wave-type rotary_gla --seq-len 256)
run() {  # name, mixer kwargs, distill args...
  local name=$1 kw=$2; shift 2
  [ -f "$R/$name/metrics.json" ] || wavedistill distill "${common[@]}" --mixer-kwargs "$kw" "$@" \
      --output-dir "$R/$name" > "$R/$name.log" 2>&1
  [ -f "$R/${name}_val/metrics.json" ] || wavedistill eval --student "$R/$name" --split val \
      --output-dir "$R/${name}_val" >> "$R/$name.log" 2>&1
}
RANGES="8:512 64:4096 512:32768"
for r in $RANGES; do
  lo=${r%:*}; hi=${r#*:}
  run "exact_${lo}_${hi}" "{\"feature_map\": \"softmax\", \"min_tau\": $lo, \"max_tau\": $hi}" --no-train
done
set -- $RANGES
for r in "$@"; do
  lo=${r%:*}; hi=${r#*:}
  run "transfer500_${lo}_${hi}" "{\"feature_dim\": 64, \"min_tau\": $lo, \"max_tau\": $hi}" \
      --stages transfer:500 --lr 0.01 &
  # two runs at a time on 2 cores
  if [ "$r" = "$2" ]; then wait; fi
done
wait
python - "$R" $RANGES <<'PY'
import json, os, sys
R, ranges = sys.argv[1], sys.argv[2:]
print("| decay time constants at start (tokens) | untrained, exact exp: val top-5 | val KL | "
      "softmax-free after 500 transfer steps: val top-5 | val KL |")
print("|---|---:|---:|---:|---:|")
for r in ranges:
    lo, hi = r.split(":")
    e = json.load(open(os.path.join(R, f"exact_{lo}_{hi}_val", "metrics.json")))
    t = json.load(open(os.path.join(R, f"transfer500_{lo}_{hi}_val", "metrics.json")))
    print(f"| {lo}..{hi} | {e['top5_overlap']:.3f} | {e['kl']:.4f} | {t['top5_overlap']:.3f} | {t['kl']:.4f} |")
print(f"\nval positions per cell: {e['positions']:,}")
PY
