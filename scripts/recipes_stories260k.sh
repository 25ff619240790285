#!/usr/bin/env bash
# Regenerates every number of the "Recipes" section of docs/results.md (issue 3) on stories260K.
# usage: bash scripts/recipes_stories260k.sh [RUNS_DIR]     (needs ../shared beside the checkout)
# Two runs at a time, one CPU thread each; finished runs are skipped, so the script can be rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}
export OMP_NUM_THREADS=1
T=../shared/teachers/stories260K
D=../shared/corpora/tinystories/stories.txt
run() {  # run NAME [distill flags]: one learned_gate run into $R/NAME unless it is finished
  local name=$1; shift
  [ -f "$R/$name/metrics.json" ] && return 0
  local resume=(); [ -d "$R/$name/checkpoint" ] && resume=(--resume)
  wavedistill distill --wave-type learned_gate --output-dir "$R/$name" "${resume[@]}" "$@" > "$R/$name.log" 2>&1
}
mkdir -p "$R"
# 1. plain KD vs transfer -> KD at the same 2,000-step budget; the per-layer report.
run kd --recipe configs/kd.yaml &
[ -f "$R/layers/layers.json" ] || wavedistill layers --teacher $T --data $D --mixer learned_gate --seq-len 256 \
  --batch-size 16 --stages transfer:500 --lr 0.01 --output-dir "$R/layers" > "$R/layers.log" 2>&1 &
wait
wavedistill compare --recipe configs/transfer_kd.yaml --mixers learned_gate --output-dir "$R/compare" > "$R/compare_lg.log" 2>&1 &
run fit_transfer_kd --recipe configs/fit_transfer_kd.yaml &
wait
run fit_only --recipe configs/kd.yaml --stages fit  # the closed-form Toeplitz start alone, no gradient step
# 2. progressive, hand-off, LoRA recovery, and a hybrid keeping the hardest layer (rank 1 in the report) as attention.
run progressive --recipe configs/progressive.yaml &
run handoff --recipe configs/handoff.yaml &
wait
# The hybrid's kept layer is chosen on val: the report (scored on val) names the two hardest layers by
# single-layer KL, each is trained as a hybrid, and the lower selected val KL wins (printed).
read -r H1 H2 < <(python -c "import json; r=json.load(open('$R/layers/layers.json'))['rows']; \
r.sort(key=lambda x: -x['kl_only_this_layer']); print(r[0]['layer'], r[1]['layer'])")
run lora --recipe configs/lora.yaml &
run "hybrid_keep$H1" --recipe configs/transfer_kd.yaml --keep-attention "$H1" &
wait
run "hybrid_keep$H2" --recipe configs/transfer_kd.yaml --keep-attention "$H2"
python -c "import json; v={h: json.load(open(f'$R/hybrid_keep{h}/metrics.json'))['selected_val_kl'] for h in ($H1, $H2)}; \
print('hybrid: selected val KL per kept layer', v, '-> keep', min(v, key=v.get))"
# 3. the same transfer -> KD recipe for every mixer (learned_gate's run from step 1 is reused).
wavedistill compare --recipe configs/transfer_kd.yaml --mixers fnet,phase_shift --output-dir "$R/compare" > "$R/compare_a.log" 2>&1 &
wavedistill compare --recipe configs/transfer_kd.yaml --mixers wave_network,frequency_band --output-dir "$R/compare" > "$R/compare_b.log" 2>&1 &
wait
wavedistill compare --recipe configs/transfer_kd.yaml --mixers learned_gate,frequency_band,phase_shift,wave_network,fnet \
  --output-dir "$R/compare"
# 4. a second seed (other training batches) of plain KD and transfer -> KD.
run kd_seed1 --recipe configs/kd.yaml --seed 1 &
run transfer_kd_seed1 --recipe configs/transfer_kd.yaml --seed 1 &
wait
wavedistill report "$R/kd" "$R/compare/learned_gate" "$R/fit_transfer_kd" "$R/progressive" "$R/handoff" "$R/lora" \
  "$R/hybrid_keep$H1" "$R/hybrid_keep$H2" --output "$R/report_recipes.md"
wavedistill report "$R/kd" "$R/kd_seed1" "$R/compare/learned_gate" "$R/transfer_kd_seed1" --output "$R/report_seeds.md"
