#!/usr/bin/env bash
# Regenerates every stories260K number of the "Content-selective mixers" section of docs/results.md (issue 9).
# usage: bash scripts/selective_stories260k.sh [RUNS_DIR]     (needs ../shared beside the checkout)
# Two runs at a time, one CPU thread each; finished runs are skipped and killed ones resumed, so it can be rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/selective
export OMP_NUM_THREADS=1
T=../shared/teachers/stories260K
D=../shared/corpora/tinystories/stories.txt
run() {  # run NAME [distill flags]: one run into $R/NAME unless it is finished
  local name=$1; shift
  [ -f "$R/$name/metrics.json" ] && return 0
  local resume=(); [ -d "$R/$name/checkpoint" ] && resume=(--resume)
  wavedistill distill --teacher $T --data $D --output-dir "$R/$name" "${resume[@]}" "$@" > "$R/$name.log" 2>&1
}
ablate() {  # ablate RUN NAME ATTRS: score a finished run's student with some mixer attributes changed
  [ -f "$R/$1/$2/metrics.json" ] || wavedistill eval --student "$R/$1" --data $D --output-dir "$R/$1/$2" \
    --mixer-attrs "$3" > "$R/$1_$2.log" 2>&1
}
mkdir -p "$R"
TKD=(--recipe configs/transfer_kd.yaml)            # transfer 500 (lr 0.01) -> kd 1,500: 2,000 steps of 16 x 256
L512=(--seq-len 512 --batch-size 8)                # the same 4,096 tokens per step at the teacher's full context
FD='{"feature_dim": 64}'                           # rotary_gla's feature map width: the best on val in step 0
# 0. Design choice on val: rotary_gla's feature map width (phi has 2 x feature_dim features; head_dim is 8).
#    500 transfer steps each; the val KL / top-5 of their last evaluation are printed.
for f in 8 32 64; do
  run "probe_f$f" --wave-type rotary_gla --mixer-kwargs "{\"feature_dim\": $f}" --stages transfer:500 --lr 0.01 &
  if [ $f = 32 ]; then wait; fi
done
wait
for f in 8 32 64; do
  python -c "import json; r=[json.loads(l) for l in open('$R/probe_f$f/train_log.jsonl') if 'val_kl' in l][-1]; \
print('feature_dim $f: val KL %.4f, val top-5 %.4f after %d transfer steps' % (r['val_kl'], r['val_top5'], r['step']))"
done
# 1. Untrained (teacher-initialised) students, and the decay with exact exp(q.k) in place of the feature map.
for m in gated_delta_net s4d phase_attention wda; do run "${m}_notrain256" --wave-type $m --no-train; done
run rotary_gla_notrain256 --wave-type rotary_gla --mixer-kwargs "$FD" --no-train
run rotary_gla_exact_notrain256 --wave-type rotary_gla --mixer-kwargs '{"feature_map": "softmax"}' --no-train
run band16_notrain256 --wave-type frequency_band --mixer-kwargs '{"window": 16, "fft_branch": false}' --no-train
run hybrid16_notrain256 --wave-type rotary_gla --mixer-kwargs '{"window": 16, "feature_dim": 64}' --no-train
# 2. Every new mixer through transfer -> kd, at 256 and 512 tokens; rotary_gla also with a pure-KL kd stage
#    (the best softmax-free student is the one of the two with the lower val KL) and at feature_dim 8.
run rotary_gla256 "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs "$FD" &
run rotary_gla_kl256 "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs "$FD" --kl-weight 1.0 --ce-weight 0 &
wait
run rotary_gla_f8_256 "${TKD[@]}" --wave-type rotary_gla &
run gated_delta_net256 "${TKD[@]}" --wave-type gated_delta_net &
wait
run s4d256 "${TKD[@]}" --wave-type s4d &
run wda256 "${TKD[@]}" --wave-type wda &
wait
run phase_attention256 "${TKD[@]}" --wave-type phase_attention &
# 3. The ablation: rotary_gla with randomly initialised q/k (v/o still the teacher's).
run rotary_gla_random_qk256 "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs "$FD" --reinit q_proj,k_proj &
wait
# 4. Hybrids: rotary_gla + a 16-token softmax band against the band alone, both trained alike.
run hybrid16_256 "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs '{"window": 16, "feature_dim": 64}' &
run band16_256 "${TKD[@]}" --wave-type frequency_band --mixer-kwargs '{"window": 16, "fft_branch": false}' &
wait
#    The hybrid with a pure-KL kd stage too; the one with the lower selected val KL is reported (pure KL).
run hybrid16_kl256 "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs '{"window": 16, "feature_dim": 64}' --kl-weight 1.0 --ce-weight 0
for h in hybrid16_256 hybrid16_kl256; do
  ablate $h band_only '{"use_linear": false}'
  ablate $h linear_only '{"use_band": false}'
done
# 5. 512 tokens.
for pair in "rotary_gla gated_delta_net" "s4d wda" "phase_attention"; do
  for m in $pair; do
    kw='{}'; if [ $m = rotary_gla ]; then kw=$FD; fi
    run "${m}512" "${TKD[@]}" "${L512[@]}" --wave-type $m --mixer-kwargs "$kw" &
  done
  wait
done
# 6. The per-layer report of the best new mixer.
[ -f "$R/layers_rotary_gla/layers.json" ] || wavedistill layers --teacher $T --data $D --mixer rotary_gla \
  --mixer-kwargs "$FD" --seq-len 256 --batch-size 16 --stages transfer:500 --lr 0.01 --output-dir "$R/layers_rotary_gla" > "$R/layers.log" 2>&1
wavedistill report "$R"/*_notrain256 --output "$R/report_untrained.md"
wavedistill report "$R"/{rotary_gla,rotary_gla_kl,rotary_gla_f8_,rotary_gla_random_qk,gated_delta_net,s4d,wda,phase_attention}256 \
  --output "$R/report_256.md"
wavedistill report "$R"/{hybrid16_kl256,hybrid16_kl256/band_only,hybrid16_kl256/linear_only,hybrid16_256,band16_256,band16_notrain256} \
  --output "$R/report_hybrid.md"
wavedistill report "$R"/{rotary_gla,gated_delta_net,s4d,wda,phase_attention}512 --output "$R/report_512.md"
