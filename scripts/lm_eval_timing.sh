#!/usr/bin/env bash
# Wall time of lm-eval per task on this machine's CPU, stories260K, by batch size and thread count (the README's
# "what to expect" numbers). usage: bash scripts/lm_eval_timing.sh [RUNS_DIR]      (needs ../shared; ~10 minutes)
# The time is lm-eval's evaluation alone (`evaluate_wall_s` in each model's JSON), without loading the model.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/lm_eval_timing
T=../shared/teachers/stories260K
mkdir -p "$R"
[ -f "$R/tasks/wavedistill_tasks.json" ] || wavedistill make-tasks --model $T --data ../shared/corpora/tinystories/stories.txt \
  --output-dir "$R/tasks" > /dev/null
echo "| task | examples | requests | threads | batch size | evaluate s |"
echo "|---|---:|---:|---:|---:|---:|"
for task in story_ending final_word; do
  for threads in 1 2; do
    for batch in 1 16 64; do
      out="$R/${task}_t${threads}_b${batch}"
      OMP_NUM_THREADS=$threads wavedistill lm-eval $T --tasks $task --include-path "$R/tasks" --batch-size $batch \
        --output-dir "$out" --overwrite > "$out.log" 2>&1
      python - "$out/model.json" "$task" "$threads" "$batch" "$R/tasks/wavedistill_tasks.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["n-samples"][sys.argv[2]]["effective"]
requests = n * (json.load(open(sys.argv[5]))["choices"] if sys.argv[2] == "story_ending" else 1)
print(f"| {sys.argv[2]} | {n} | {requests} | {sys.argv[3]} | {sys.argv[4]} | {r['wavedistill']['evaluate_wall_s']} |")
PY
    done
  done
done
