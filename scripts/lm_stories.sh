#!/usr/bin/env bash
# Language models from scratch on TinyStories subwords (docs/lab.md, "Language models from scratch"):
# six mixers at equal parameters (MLP width matched to attention's model, within 5 %) and equal tokens,
# lr per mixer chosen on the val loss of a held-out seed (100), then seeds 0, 1 and 2 reported on test;
# the hybrid (rotary_gla with an exact cache of 16 recent tokens + 4 sinks) as an extra row; then the report
# (perplexity table, held-out loss vs tokens, induction, decode ms/token, greedy samples, wda routing).
# About 90 minutes on a 2-core CPU (two runs at a time, one thread each).
set -euo pipefail
WD=${WAVEDISTILL:-wavedistill}
SHARED=${SHARED:-../shared}
OUT=${OUT:-runs/lab/stories}
COMMON=(--task stories --data "$SHARED/corpora/tinystories/stories.txt" --tokenizer "$SHARED/teachers/stories260K"
        --match-params attention --lr-sweep 3e-3,6e-3,1.2e-2 --seeds "${SEEDS:-0,1,2}" --jobs 2)
MIXERS=attention,wda,rotary_gla,gated_delta_net,s4d,learned_gate
$WD lab compare "${COMMON[@]}" --mixers "$MIXERS" --output-dir "$OUT/pure"
$WD lab compare "${COMMON[@]}" --mixers rotary_gla --mixer-kwargs '{"window": 16, "sinks": 4}' \
    --output-dir "$OUT/hybrid_w16_s4"
$WD lab lm-report "$OUT"/pure/{attention,wda,rotary_gla,gated_delta_net,s4d,learned_gate} \
    "$OUT/hybrid_w16_s4/rotary_gla" --output-dir "$OUT/report"
