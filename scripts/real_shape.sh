#!/usr/bin/env bash
# Peak memory and tokens per second of `distill` at Qwen3-0.6B's real shape on this machine (docs/benchmarks.md).
# usage: bash scripts/real_shape.sh [RUNS_DIR]     (needs ../shared for the data and the tokenizer; ~30 min on 2 cores)
# Each run: 3 kd steps of 2 x 512 tokens with rotary_gla in all 28 layers, fp32 or bf16, 1 or 2 processes (torchrun,
# gloo); `peak_rss_mb` in metrics.json is the main process's resident high-water mark.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/real_shape
mkdir -p "$R"
[ -f "$R/qwen3_shape/config.json" ] || python scripts/real_shape.py "$R/qwen3_shape" --dtype bfloat16
for dtype in float32 bfloat16; do
  for n in 1 2; do
    out="$R/${dtype}_${n}proc"
    [ -f "$out/metrics.json" ] && continue
    launch=(wavedistill); [ $n = 2 ] && launch=(torchrun --nproc_per_node 2 -m wavedistill)
    OMP_NUM_THREADS=$((2 / n)) "${launch[@]}" distill --recipe configs/real_shape.yaml --teacher "$R/qwen3_shape" \
      --dtype $dtype --output-dir "$out" > "$out.log" 2>&1
  done
done
python - "$R" <<'PY'
import json, sys
R = sys.argv[1]
print("| dtype | processes | peak RSS per process (MB) | training tokens/s | KD steps |")
print("|---|---:|---:|---:|---:|")
for dtype in ("float32", "bfloat16"):
    for n in (1, 2):
        m = json.load(open(f"{R}/{dtype}_{n}proc/metrics.json"))
        kd = m["stages"][-1]
        print(f"| {dtype} | {n} | {m['peak_rss_mb']:,.0f} | {kd['tokens_per_s']:,.0f} | {kd['steps']} |")
PY
