#!/usr/bin/env bash
# The pure softmax-free student at its start (issue 20, section 3): rotary_gla built from the teacher (--no-train)
# with the learned Hedgehog map at its identity init (feature_dim 64) vs Based's fixed Taylor features, on val.
# usage: bash scripts/feature_init_stories260k.sh [RUNS_DIR]     (needs ../shared; ~5 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/feature_init
export OMP_NUM_THREADS=1
mkdir -p "$R"
for kw in '{"feature_dim": 64}' '{"feature_map": "taylor"}'; do
  name=$(python -c "import json, sys; print(json.loads(sys.argv[1]).get('feature_map', 'hedgehog'))" "$kw")
  [ -f "$R/$name/metrics.json" ] || wavedistill distill --teacher ../shared/teachers/stories260K \
      --data ../shared/corpora/tinystories/stories.txt --wave-type rotary_gla --mixer-kwargs "$kw" --seq-len 256 \
      --no-train --output-dir "$R/$name" > "$R/$name.log" 2>&1
  [ -f "$R/${name}_val/metrics.json" ] || wavedistill eval --student "$R/$name" --split val --output-dir "$R/${name}_val" \
      >> "$R/$name.log" 2>&1
  python -c "import json; m = json.load(open('$R/${name}_val/metrics.json')); print('$name untrained: val top-5', round(m['top5_overlap'], 3), 'KL', round(m['kl'], 4), m['positions'], 'positions')"
done
