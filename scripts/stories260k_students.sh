# Sourced by scripts/keep_lose_stories260k.sh and scripts/redesign_repro_stories260k.sh (not run on its own): the
# stories260K teacher and corpus, `train`, and the exact commands of the students both scripts train.
# Needs R (the folder of the runs) set by the script that sources it.
T=../shared/teachers/stories260K
D=../shared/corpora/tinystories/stories.txt
train() {  # train NAME COMMAND [flags]: one run into $R/NAME unless it is finished; a killed run is resumed
  local name=$1 cmd=$2; shift 2
  [ -f "$R/$name/metrics.json" ] && return 0
  local resume=(); [ -d "$R/$name/checkpoint" ] && resume=(--resume)
  wavedistill "$cmd" --teacher $T --data $D --output-dir "$R/$name" "${resume[@]}" "$@" > "$R/$name.log" 2>&1
}
TKD=(--recipe configs/transfer_kd.yaml)  # transfer 500 (lr 0.01) -> kd 1,500: 2,000 steps of 16 x 256 tokens
FD='{"feature_dim": 64}'
COMPRESSED=(--student compressed --batch-size 16 --seq-len 256 --seed 0)
# one student of each family: a linear-filter mixer, a content-selective mixer, a separate smaller student
LEARNED_GATE=(distill "${TKD[@]}" --wave-type learned_gate)
ROTARY_GLA=(distill "${TKD[@]}" --wave-type rotary_gla --mixer-kwargs "$FD" --kl-weight 1.0 --ce-weight 0)
COMPRESSED_ATTENTION=(kd "${COMPRESSED[@]}" --max-steps 800 --lr 3e-3 --kl-weight 0.9 --ce-weight 0.1 --eval-every 100
                      --save-every 200)
