#!/usr/bin/env bash
# Issue 21's check that the redesign changed no behaviour: one student of each family (a linear-filter mixer, a
# content-selective mixer, a separate smaller student) retrained on the current code with the exact commands of
# scripts/keep_lose_stories260k.sh (both take them from scripts/stories260k_students.sh), then their test metrics
# beside the runs that docs/results.md reports.
# usage: bash scripts/redesign_repro_stories260k.sh [RUNS_DIR]   (needs ../shared and runs/keep_lose; ~1.5 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/redesign_repro
REF=${1:-runs}/keep_lose
export OMP_NUM_THREADS=1
mkdir -p "$R"
. scripts/stories260k_students.sh  # train and the students' commands, the ones keep_lose_stories260k.sh runs
train rotary_gla "${ROTARY_GLA[@]}" &
( train compressed_attention "${COMPRESSED_ATTENTION[@]}"
  train learned_gate "${LEARNED_GATE[@]}" ) &
wait
python - "$R" "$REF" <<'PY'
import json, os, sys
R, REF = sys.argv[1:]
print("| student | test top-5, reported | now | test KL, reported | now | ppl, reported | now | positions |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name in ("learned_gate", "rotary_gla", "compressed_attention"):
    old, new = (json.load(open(os.path.join(d, name, "metrics.json"))) for d in (REF, R))
    assert old["positions"] == new["positions"], (name, old["positions"], new["positions"])
    print(f"| {name} | {old['top5_overlap']:.3f} | {new['top5_overlap']:.3f} | {old['kl']:.4f} | {new['kl']:.4f} | "
          f"{old['ppl_student']:.2f} | {new['ppl_student']:.2f} | {new['positions']:,} |")
PY
