#!/usr/bin/env bash
# Regenerates the "What the students keep and lose" section of docs/results.md (issue 17).
# usage: bash scripts/keep_lose_stories260k.sh [RUNS_DIR]      (needs ../shared beside the checkout; ~4 hours on 2 cores)
# 1. trains the students of that section with the recipes of the earlier sections, and writes their untrained
#    (teacher-initialised) starts; 2. scores each with the evaluation suite (recall probes, context length, lm-eval
#    on tasks made from the test split; the teacher and no-mixing baseline come with every suite), the hybrid also
#    with its wave branch switched off; 3. the side-by-side tables. Finished steps are skipped, killed runs resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/keep_lose
export OMP_NUM_THREADS=1
mkdir -p "$R"
. scripts/stories260k_students.sh  # T, D, train, TKD, FD, COMPRESSED and the students' commands
suite() {  # suite RUN [OUTPUT_DIR FLAGS...]: the evaluation suite of a finished run unless it is done
  local run=$1 out=${2:-$1}; shift; [ $# -gt 0 ] && shift
  [ -f "$R/$out/suite/lm_eval.json" ] && return 0
  local where=(); [ "$out" != "$run" ] && where=(--output-dir "$R/$out")
  wavedistill eval --student "$R/$run" --suite recall,length,lm-eval "${where[@]}" "$@" > "$R/$out.suite.log" 2>&1
}
HYB='{"window": 16, "feature_dim": 64}'
# 1. The students, each with the recipe its earlier section reports (docs/results.md), and their untrained starts.
train learned_gate "${LEARNED_GATE[@]}" &
train frequency_band distill --wave-type frequency_band --max-steps 2000 --batch-size 16 --seq-len 256 &
wait
train rotary_gla "${ROTARY_GLA[@]}" &
train gated_delta_net distill "${TKD[@]}" --wave-type gated_delta_net &
wait
train hybrid16 distill "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs "$HYB" --kl-weight 1.0 --ce-weight 0 &
train compressed_attention "${COMPRESSED_ATTENTION[@]}" &
wait
for m in learned_gate frequency_band gated_delta_net; do train ${m}_untrained distill --wave-type $m --no-train; done
train rotary_gla_untrained distill --wave-type rotary_gla --mixer-kwargs "$FD" --no-train
train hybrid16_untrained distill --wave-type rotary_gla --mixer-kwargs "$HYB" --no-train
train compressed_attention_untrained kd "${COMPRESSED[@]}" --no-train
# 2. The suite, two at a time (one CPU thread each).
STUDENTS=(learned_gate frequency_band rotary_gla gated_delta_net hybrid16 compressed_attention)
for run in "${STUDENTS[@]}" "${STUDENTS[@]/%/_untrained}"; do
  suite "$run" &
  [ "$(jobs -r | wc -l)" -ge 2 ] && wait -n
done
suite hybrid16 hybrid16/wave_branch_off --mixer-attrs '{"use_linear": false}' &
wait
[ -f "$R/hybrid16/wave_branch_off/metrics.json" ] || wavedistill eval --student "$R/hybrid16" \
  --output-dir "$R/hybrid16/wave_branch_off" --mixer-attrs '{"use_linear": false}' > "$R/hybrid16_branch_off.log" 2>&1
# 3. Tables: the usual report (top-5 / KL and the suite's headline numbers) and the suites side by side.
wavedistill report "${STUDENTS[@]/#/$R/}" "$R/hybrid16/wave_branch_off" \
  $(for s in "${STUDENTS[@]}"; do echo "$R/${s}_untrained"; done) --output "$R/report.md" > /dev/null
wavedistill report --suite "${STUDENTS[@]/#/$R/}" "$R/hybrid16/wave_branch_off" --output "$R/suite_trained.md" > /dev/null
wavedistill report --suite $(for s in "${STUDENTS[@]}"; do echo "$R/${s}_untrained"; done) --output "$R/suite_untrained.md" > /dev/null
echo "tables: $R/report.md, $R/suite_trained.md, $R/suite_untrained.md"
