#!/usr/bin/env bash
# Issue 11 item 4: a selective S4D teacher on event_hold, distilled into non-selective s4d students at three
# presets, each against the same student trained on ground truth only (the control), 3 seeds each; plus a
# selective_s4d student at the smallest preset trained on ground truth only (is it the size or the selectivity?).
# usage: bash scripts/event_hold_distill.sh [RUNS_DIR]    then: python scripts/event_hold_table.py [RUNS_DIR]
# Two processes at a time, one CPU thread each; finished seeds are reused, so the script can be rerun.
# About 85 minutes on 2 cores.
# Every run uses the default lr of the task (3e-3): no choice was made on test data.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/lab/event_hold}
wavedistill lab event_hold --mixer selective_s4d --n-layers 6 --steps 3000 --eval-every 250 --seeds 0 \
  --output-dir "$R/teacher"
T="$R/teacher/seed_0"
S=(--steps 1500 --eval-every 250 --seeds 0,1,2 --teacher "$T" --jobs 2)
for p in standard compressed tiny; do
  wavedistill lab event_hold --mixer s4d --preset $p "${S[@]}" --output-dir "$R/kd_$p"
  wavedistill lab event_hold --mixer s4d --preset $p "${S[@]}" --task-weight 1 --output-weight 0 --hidden-weight 0 --output-dir "$R/control_$p"
  # Ablation: the feature term as a plain MSE of block outputs, the formula taken literally.
  wavedistill lab event_hold --mixer s4d --preset $p "${S[@]}" --feature-loss mse --output-dir "$R/kd_rawfeat_$p"
done
wavedistill lab event_hold --mixer selective_s4d --preset tiny --state-dim 32 "${S[@]}" \
  --task-weight 1 --output-weight 0 --hidden-weight 0 --output-dir "$R/control_tiny_selective"
# Ablation on the compressed preset: no feature term (task_weight 0.3, output_weight 0.7, hidden_weight 0).
wavedistill lab event_hold --mixer s4d --preset compressed "${S[@]}" --task-weight 0.3 --output-weight 0.7 --hidden-weight 0 \
  --output-dir "$R/kd_nofeat_compressed"
