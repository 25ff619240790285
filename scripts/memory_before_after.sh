#!/usr/bin/env bash
# Peak memory of a distill run before and after "one copy of the base" (commit f7f9f15): the same command
# run by the code just before it (19509f9, in a git worktree with its own venv) and by this checkout.
# usage: bash scripts/memory_before_after.sh [RUNS_DIR]   (needs ../shared; THREADS=1 for one core; the real-shape rows need
#        runs/real_shape/qwen3_shape from scripts/real_shape.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
R=$(realpath -m "${1:-runs}")/memory
BEFORE=${BEFORE:-19509f9}
W=/tmp/wavedistill_before_$BEFORE
if [ ! -d "$W" ]; then
  git worktree add --detach "$W" "$BEFORE"
  (cd "$W" && python3 -m venv .venv && . .venv/bin/activate && pip install -q torch==2.13.0 && pip install -q -e .)
fi
mkdir -p "$R"
T=$(realpath ../shared/teachers/stories260K); D=$(realpath ../shared/corpora/tinystories/stories.txt)
STORIES=(--teacher "$T" --data "$D" --wave-type rotary_gla --max-steps 20 --batch-size 16 --seq-len 256)
SHAPE=(--recipe "$(realpath configs/real_shape.yaml)" --teacher "$(realpath -m runs/real_shape/qwen3_shape)"
       --data "$D")
measure() {  # measure NAME CODE_DIR distill-args...: the peak resident set size (MB) of the whole run
  local name=$1 code=$2; shift 2
  [ -f "$R/$name.rss" ] && return 0
  rm -rf "$R/$name"
  # A run the kernel kills for memory still leaves its peak in $name.rss (after a "Command terminated" line).
  ( cd "$code" && OMP_NUM_THREADS=${THREADS:-2} /usr/bin/time -f "%M" -o "$R/$name.rss" .venv/bin/wavedistill distill "$@" \
      --output-dir "$R/$name" > "$R/$name.log" 2>&1 ) || true
}
peak() {  # peak NAME: "MB", or "killed at MB" when the run did not finish
  local kb; kb=$(tail -1 "$R/$1.rss")
  if grep -q "terminated" "$R/$1.rss"; then echo "killed ($(head -1 "$R/$1.rss" | sed 's/Command terminated by //')) at $((kb / 1024))"
  else echo $((kb / 1024)); fi
}
measure stories_before "$W" "${STORIES[@]}"
measure stories_after "$PWD" "${STORIES[@]}"
if [ -f runs/real_shape/qwen3_shape/config.json ]; then
  measure shape_fp32_before "$W" "${SHAPE[@]}" --dtype float32
  measure shape_fp32_after "$PWD" "${SHAPE[@]}" --dtype float32
  measure shape_bf16_before "$W" "${SHAPE[@]}" --dtype bfloat16
  measure shape_bf16_after "$PWD" "${SHAPE[@]}" --dtype bfloat16
  measure shape_fp32_after_ckpt "$PWD" "${SHAPE[@]}" --dtype float32 --grad-checkpointing
fi
echo "| run | peak RSS before (MB) | after (MB) |"
echo "|---|---:|---:|"
for run in stories shape_fp32 shape_bf16; do
  [ -f "$R/${run}_after.rss" ] || continue
  echo "| $run | $(peak "${run}_before") | $(peak "${run}_after") |"
done
[ -f "$R/shape_fp32_after_ckpt.rss" ] && echo "| shape_fp32, after, --grad-checkpointing | | $(peak shape_fp32_after_ckpt) |"
