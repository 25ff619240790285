#!/usr/bin/env bash
# Regenerates every stories260K number in docs/results.md (CPU, about 10 minutes per run on one core).
# usage: bash scripts/stories260k.sh [RUNS_DIR]     (needs ../shared beside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}
T=../shared/teachers/stories260K
D=../shared/corpora/tinystories/stories.txt
run() {  # run NAME MIXER SEQ_LEN BATCH [extra flags]
  local name=$1 mixer=$2 seq=$3 bs=$4; shift 4
  [ -f "$R/$name/metrics.json" ] && return 0
  OMP_NUM_THREADS=1 wavedistill distill --teacher $T --data $D --wave-type "$mixer" --max-steps 2000 \
    --batch-size "$bs" --seq-len "$seq" --output-dir "$R/$name" "$@"
}
for pair in lg:learned_gate fb:frequency_band fnet:fnet ps:phase_shift wn:wave_network; do
  run "${pair%%:*}256" "${pair#*:}" 256 16
  run "${pair%%:*}512" "${pair#*:}" 512 8
done
run fbnofft256 frequency_band 256 16 --mixer-kwargs '{"fft_branch": false}'
for pair in lg:learned_gate fb:frequency_band fnet:fnet ps:phase_shift wn:wave_network; do  # untrained students
  [ -f "$R/${pair%%:*}_notrain256/metrics.json" ] || OMP_NUM_THREADS=1 wavedistill distill --teacher $T --data $D \
    --wave-type "${pair#*:}" --no-train --seq-len 256 --output-dir "$R/${pair%%:*}_notrain256"
done
[ -f "$R/fbwin64_notrain256/metrics.json" ] || OMP_NUM_THREADS=1 wavedistill distill --teacher $T --data $D \
  --wave-type frequency_band --mixer-kwargs '{"fft_branch": false, "window": 64}' --no-train --seq-len 256 \
  --output-dir "$R/fbwin64_notrain256"
[ -f "$R/fb_notrain512/metrics.json" ] || OMP_NUM_THREADS=1 wavedistill distill --teacher $T --data $D \
  --wave-type frequency_band --no-train --seq-len 512 --output-dir "$R/fb_notrain512"
run fbkl256 frequency_band 256 16 --kl-weight 1.0 --ce-weight 0  # pure KL: does the CE term pull frequency_band away?
wavedistill report "$R"/{lg,fb,fnet,ps,wn}256 "$R"/fbnofft256 "$R"/fbkl256 "$R"/fbwin64_notrain256 --output "$R/report_256.md"
wavedistill report "$R"/{lg,fb,fnet,ps,wn}_notrain256 --output "$R/report_notrain_256.md"
wavedistill report "$R"/{lg,fb,fnet,ps,wn}512 "$R"/fb_notrain512 --output "$R/report_512.md"
