#!/usr/bin/env bash
# Two levers of the pure rotary_gla student (issue 20, section 3), each measured on the whole val split:
# A. How the decay starts. Its time constants start log-spaced over [min_tau, max_tau] tokens across heads
#    (default 8..512). Per range: (1) untrained, with the exact exp(q.k/sqrt(d)) in place of the feature map
#    (feature_map="softmax"): what the decay alone costs before any training; (2) the softmax-free student
#    (Hedgehog map, feature_dim 64) after 500 transfer steps (lr 0.01).
# B. What the first stage fits: the teacher's attention outputs (transfer, output MSE, as A's default row) or its
#    attention weights (Hedgehog's objective: KL per query row of each layer's mixing matrix to the teacher's
#    attention map, configs/attention_kl_500.yaml), the same 500 steps of 16 x 256 at lr 0.01.
# usage: bash scripts/rotary_gla_levers_stories260k.sh [RUNS_DIR]     (needs ../shared; ~1.5 hours on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/rotary_gla_levers
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
# B: Hedgehog's objective in the first stage (the recipe names the mixer, its width and the budget)
run attention_kl500 '{"feature_dim": 64}' --recipe configs/attention_kl_500.yaml &
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
a = json.load(open(os.path.join(R, "attention_kl500_val", "metrics.json")))
print(f"\nfirst stage fitting the attention weights (KL), 500 steps: val top-5 {a['top5_overlap']:.3f}, "
      f"val KL {a['kl']:.4f} (fitting the outputs, 8..512: the first table's row)")
PY
