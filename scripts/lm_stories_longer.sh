#!/usr/bin/env bash
# The 3x longer check of docs/lab.md's language-model table: attention, wda and gated_delta_net (all chosen
# lr 6e-3 in scripts/lm_stories.sh) for 1,800 steps = 7.4M tokens (28 passes over the 260K train tokens), seed 0.
# About 20 minutes on a 2-core CPU.
set -euo pipefail
WD=${WAVEDISTILL:-wavedistill}
SHARED=${SHARED:-../shared}
OUT=${OUT:-runs/lab/stories}
$WD lab compare --task stories --data "$SHARED/corpora/tinystories/stories.txt" \
    --tokenizer "$SHARED/teachers/stories260K" --match-params attention --mixers attention,wda,gated_delta_net \
    --lr 6e-3 --steps 1800 --seeds 0 --jobs 2 --output-dir "$OUT/longer"
