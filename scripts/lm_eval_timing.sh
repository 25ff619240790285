#!/usr/bin/env bash
# Wall time of lm-eval per task on this machine's CPU, stories260K, by batch size and thread count (the README's
# "what to expect" numbers). usage: bash scripts/lm_eval_timing.sh [RUNS_DIR]     (needs ../shared; ~15 minutes)
# The time is lm-eval's evaluation alone (`evaluate_wall_s` in each model's JSON), without loading the model;
# each cell runs 3 times: median (min-max). TASKS="final_word" limits the tasks timed.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/lm_eval_timing
T=../shared/teachers/stories260K
mkdir -p "$R"
[ -f "$R/tasks/wavedistill_tasks.json" ] || wavedistill make-tasks --model $T --data ../shared/corpora/tinystories/stories.txt \
  --output-dir "$R/tasks" > /dev/null
echo "| task | examples | requests | threads | batch size | evaluate s, median of 3 (min–max) |"
echo "|---|---:|---:|---:|---:|---:|"
for task in ${TASKS:-story_ending final_word}; do
  for threads in 1 2; do
    for batch in 1 16 64; do
      outs=()
      for rep in 1 2 3; do
        out="$R/${task}_t${threads}_b${batch}_r$rep"
        OMP_NUM_THREADS=$threads wavedistill lm-eval $T --tasks $task --include-path "$R/tasks" --batch-size $batch \
          --output-dir "$out" --overwrite > "$out.log" 2>&1
        outs+=("$out/model.json")
      done
      python - "$task" "$threads" "$batch" "$R/tasks/wavedistill_tasks.json" "${outs[@]}" <<'PY'
import json, statistics, sys
task, threads, batch, manifest, *paths = sys.argv[1:]
runs = [json.load(open(p)) for p in paths]
n = runs[0]["n-samples"][task]["effective"]
requests = n * (json.load(open(manifest))["choices"] if task == "story_ending" else 1)
s = [r["wavedistill"]["evaluate_wall_s"] for r in runs]
print(f"| {task} | {n} | {requests} | {threads} | {batch} | {statistics.median(s):.1f} ({min(s):.1f}–{max(s):.1f}) |")
PY
    done
  done
done
