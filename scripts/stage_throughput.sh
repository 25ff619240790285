#!/usr/bin/env bash
# Tokens per second of the transfer stage vs the kd stage, learned_gate on stories260K, 16 x 256 tokens
# per step, one CPU thread, one run after the other (run it with nothing else on the machine).
# usage: bash scripts/stage_throughput.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/throughput
export OMP_NUM_THREADS=1
for stage in transfer kd; do
  [ -f "$R/$stage/metrics.json" ] || wavedistill distill --teacher ../shared/teachers/stories260K \
    --data ../shared/corpora/tinystories/stories.txt --wave-type learned_gate --stages "$stage:300" --lr 0.01 \
    --batch-size 16 --seq-len 256 --eval-every 1000 --save-every 1000 --output-dir "$R/$stage" > "$R.$stage.log" 2>&1
done
python - "$R" <<'PY'
import json, sys
for stage in ("transfer", "kd"):
    s = json.load(open(f"{sys.argv[1]}/{stage}/metrics.json"))["stages"][0]
    print(f"{stage}: {s['steps']} steps, {s['tokens']:,} tokens in {s['train_wall_s']:.1f} s of training = "
          f"{s['tokens_per_s']:,.0f} tokens/s")
PY
