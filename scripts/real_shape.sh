#!/usr/bin/env bash
# Peak memory and tokens per second of `distill` at Qwen3-0.6B's real shape on this machine (docs/benchmarks.md).
# usage: bash scripts/real_shape.sh [RUNS_DIR]     (needs ../shared for the data and the tokenizer; ~30 min on 2 cores)
# Each run: 3 kd steps of 2 x 512 tokens with rotary_gla in all 28 layers, fp32 or bf16, 1 or 2 processes (torchrun,
# gloo), with --grad-checkpointing: without it one fp32 process peaks at ~21 GB (10.7 GB of it the student's
# activations), so two do not fit in this machine's 23 GB. `peak_rss_mb` in metrics.json is the main process's
# resident high-water mark. The fp32 1-process run without checkpointing is kept as one more row when present
# (run it with NOCKPT=1).
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
      --dtype $dtype --grad-checkpointing --output-dir "$out" > "$out.log" 2>&1
  done
done
if [ "${NOCKPT:-0}" = 1 ] && [ ! -f "$R/float32_1proc_nockpt/metrics.json" ]; then
  OMP_NUM_THREADS=2 wavedistill distill --recipe configs/real_shape.yaml --teacher "$R/qwen3_shape" --dtype float32 \
    --output-dir "$R/float32_1proc_nockpt" > "$R/float32_1proc_nockpt.log" 2>&1
fi
python - "$R" <<'PY'
import json, sys
R = sys.argv[1]
import os
print("| dtype | processes | grad checkpointing | peak RSS per process (MB) | training tokens/s | KD steps |")
print("|---|---:|---|---:|---:|---:|")
runs = [(d, n, "yes", f"{d}_{n}proc") for d in ("float32", "bfloat16") for n in (1, 2)]
runs.append(("float32", 1, "no", "float32_1proc_nockpt"))
for dtype, n, ckpt, name in runs:
    if not os.path.isfile(f"{R}/{name}/metrics.json"):
        continue
    m = json.load(open(f"{R}/{name}/metrics.json"))
    kd = m["stages"][-1]
    print(f"| {dtype} | {n} | {ckpt} | {m['peak_rss_mb']:,.0f} | {kd['tokens_per_s']:,.0f} | {kd['steps']} |")
PY
