#!/usr/bin/env bash
# Regenerates the tables and plots of docs/benchmarks.md on this machine (run it with nothing else running).
# usage: bash scripts/bench_cpu.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/bench
NEW=rotary_gla,gated_delta_net,s4d,wda,phase_attention
# 1. One mixer layer, forward and forward + backward, against the registered attention (width 256, batch 1).
wavedistill bench --mixers fnet,learned_gate,phase_shift,wave_network,frequency_band,$NEW --seq-lens 512,2048,8192,16384 \
  --output-dir "$R/train"
# 2. Decoding: ms per generated token and state memory after prompts of 512 .. 16K tokens, one layer's step
#    and a whole 4-layer model (width 256) through Hugging Face's cache.
wavedistill bench --decode --mixers learned_gate,frequency_band,phase_shift,fnet,wave_network,$NEW \
  --prompts 512,2048,8192,16384 --output-dir "$R/decode"
# 3. The KD loss alone at 16K positions x Qwen3's 151,936-token vocabulary (needs ~16 GB free).
wavedistill bench --loss --output-dir "$R/loss"
# ... and at 2,048 positions, where the dense loss fits in memory too.
wavedistill bench --loss --loss-positions 2048 --output-dir "$R/loss_2048"
# 4. The plots and raw numbers docs/benchmarks.md shows (generated files live in docs/img/).
cp "$R/train/bench.json" docs/img/benchmarks_cpu.json && cp "$R/train/bench.png" docs/img/benchmarks_cpu.png
cp "$R/decode/decode.json" docs/img/benchmarks_decode_cpu.json && cp "$R/decode/decode.png" docs/img/benchmarks_decode_cpu.png
