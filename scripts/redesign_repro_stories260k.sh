#!/usr/bin/env bash
# Issue 21's check that the redesign changed no behaviour: one student of each family retrained on the current code
# with the exact commands of scripts/keep_lose_stories260k.sh (a linear-filter mixer, a content-selective mixer, a
# separate smaller student), then their test metrics beside the runs that docs/results.md reports.
# usage: bash scripts/redesign_repro_stories260k.sh [RUNS_DIR]   (needs ../shared and runs/keep_lose; ~1.5 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/redesign_repro
REF=${1:-runs}/keep_lose
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
TKD=(--recipe configs/transfer_kd.yaml)
train rotary_gla distill "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs '{"feature_dim": 64}' --kl-weight 1.0 \
  --ce-weight 0 &
( train compressed_attention kd --student compressed --batch-size 16 --seq-len 256 --seed 0 --max-steps 800 --lr 3e-3 \
    --kl-weight 0.9 --ce-weight 0.1 --eval-every 100 --save-every 200
  train learned_gate distill "${TKD[@]}" --wave-type learned_gate ) &
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
