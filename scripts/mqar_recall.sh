#!/usr/bin/env bash
# Regenerates the MQAR recall table of docs/lab.md (issue 9, item 4) on a 2-core CPU (~2 hours).
# usage: bash scripts/mqar_recall.sh [RUNS_DIR]
# A setting this CPU can run where softmax attention recalls (Zoology's short form): 64 tokens, 4 key-value
# pairs, a 128-token vocabulary, 1,000 steps of 64 sequences. Each mixer's lr is chosen from 1e-3 / 3e-3 on a
# held-out seed (100), whose data is generated apart from the reported seeds 0, 1, 2 (`lab compare --lr-sweep`).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/lab}
wavedistill lab compare --task mqar --mixers attention,rotary_gla,gated_delta_net,learned_gate,s4d,phase_attention,wda \
  --seq-len 64 --n-pairs 4 --vocab 128 --steps 1000 --eval-every 100 --lr-sweep 1e-3,3e-3 --lr-seed 100 \
  --seeds 0,1,2 --jobs "${JOBS:-2}" --output-dir "$R/mqar_recall"
# The content-selective mixers at 3x the budget (3,000 steps), same settings and lr: does recall set in later?
wavedistill lab compare --task mqar --mixers gated_delta_net,rotary_gla --lr-sweep 1e-3,3e-3 --lr-seed 100 \
  --seq-len 64 --n-pairs 4 --vocab 128 --steps 3000 --eval-every 100 --seeds 0,1,2 --jobs "${JOBS:-2}" \
  --output-dir "$R/mqar_recall_3000"
