#!/usr/bin/env bash
# Regenerates every number and plot of docs/lab.md (issue 4) on a 2-core CPU.
# usage: bash scripts/lab.sh [RUNS_DIR]     (char-LM needs ../shared beside the checkout)
# Two processes at a time, one CPU thread each; finished seeds are reused, so the script can be rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/lab}
M=attention,fnet,learned_gate,phase_shift,wave_network
# Modular addition in the CPU setup: p = 97 with 50 % of the pairs (Nanda et al. use p = 113 and 30 %),
# Nanda's model and optimiser otherwise (1 layer, width 128, 4 heads, ReLU MLP 512, full batch, AdamW
# lr 1e-3, weight decay 1, betas 0.9 / 0.98); at most 1,500 steps, stopping 100 steps after grokking.
GROK=(--p 97 --train-frac 0.5 --steps 1500 --eval-every 50 --stop-after-grok 100 --jobs 2)
wavedistill lab compare --task modular --mixers $M "${GROK[@]}" --seeds 0,1,2,3,4 --output-dir "$R/modular"
for task in copy reverse sort; do  # length 16, vocabulary 16, 2 layers, width 64
  wavedistill lab compare --task $task --mixers $M --seeds 0 --steps 1500 --jobs 2 --output-dir "$R/$task"
done
wavedistill lab compare --task charlm --data ../shared/corpora/tinyshakespeare/input.txt --mixers $M --seeds 0 \
  --steps 1000 --jobs 2 --output-dir "$R/charlm"
# Phase embeddings (the inductive-bias result): two seeds, to fit the CPU budget.
wavedistill lab compare --task modular --mixers $M "${GROK[@]}" --seeds 0,1 --phase-embedding --output-dir "$R/modular_phase"
wavedistill lab compare --task mqar --mixers $M --seeds 0 --steps 1200 --jobs 2 --output-dir "$R/mqar"
