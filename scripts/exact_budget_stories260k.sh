#!/usr/bin/env bash
# The teacher's own exact weights on a bounded budget (issue 20, section 2): how much of stories260K's attention
# a window of W keys holds, with and without the first S real tokens (attention sinks), before any training.
# Each rotary_gla hybrid is built from the teacher (--no-train) and scored on val with its linear branch off
# (the band and sinks alone are the teacher's softmax restricted to those keys) and on.
# usage: bash scripts/exact_budget_stories260k.sh [RUNS_DIR]     (needs ../shared; ~15 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/exact_budget
export OMP_NUM_THREADS=1
mkdir -p "$R"
for W in 16 32 60; do for S in 0 4; do
  name=w${W}_s${S}
  [ -f "$R/$name/metrics.json" ] || wavedistill distill --teacher ../shared/teachers/stories260K \
      --data ../shared/corpora/tinystories/stories.txt --wave-type rotary_gla --seq-len 256 --no-train \
      --mixer-kwargs "{\"window\": $W, \"sinks\": $S, \"feature_dim\": 64}" --output-dir "$R/$name" > "$R/$name.log" 2>&1
  for linear in true false; do
    [ -f "$R/${name}_val_linear_$linear/metrics.json" ] || wavedistill eval --student "$R/$name" --split val \
        --mixer-attrs "{\"use_linear\": $linear}" --output-dir "$R/${name}_val_linear_$linear" >> "$R/$name.log" 2>&1
  done
done; done
python - "$R" <<'PY'
import json, sys, os
R = sys.argv[1]
print("| window | sinks | exact tokens | val top-5, band + sinks alone | val top-5, with the untrained linear branch | val KL alone | val KL with linear |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for W in (16, 32, 60):
    for S in (0, 4):
        m = {l: json.load(open(os.path.join(R, f"w{W}_s{S}_val_linear_{l}", "metrics.json"))) for l in ("false", "true")}
        print(f"| {W} | {S} | {W + S} | {m['false']['top5_overlap']:.3f} | {m['true']['top5_overlap']:.3f} | "
              f"{m['false']['kl']:.4f} | {m['true']['kl']:.4f} |")
print(f"\nval positions per cell: {m['false']['positions']:,}")
PY
