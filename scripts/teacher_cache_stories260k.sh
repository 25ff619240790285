#!/usr/bin/env bash
# The offline teacher cache on stories260K: write the top-32 cache of the training split, then distill at
# the same budget online and from the cache, and compare held-out (test) KL, bytes per token and tokens/s.
# usage: bash scripts/teacher_cache_stories260k.sh [RUNS_DIR]     (needs ../shared beside the checkout)
# online and cached run side by side, one CPU thread each, so their tokens/s are measured under the same load
# (run it on an otherwise idle 2-core machine); online_random runs after them. Finished runs are skipped.
#   online        teacher forward every step, batches drawn from the same fixed windows as the cached run
#                 (--train-windows fixed): step for step the same tokens, only the targets differ
#   cached        --teacher-cache: the teacher's top-32 + rest bucket, no teacher forward in training
#   online_random the default online run (windows at random offsets), for reference
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}/teacher_cache
export OMP_NUM_THREADS=1
T=../shared/teachers/stories260K
D=../shared/corpora/tinystories/stories.txt
RECIPE=(--teacher $T --data $D --wave-type rotary_gla --mixer-kwargs '{"feature_dim": 64}' --stages kd:1000
        --kl-weight 1.0 --ce-weight 0 --batch-size 16 --seq-len 256)
mkdir -p "$R"
[ -f "$R/cache/cache.json" ] || wavedistill cache-teacher --teacher $T --data $D --seq-len 256 --top-k 32 \
  --output-dir "$R/cache" > "$R/cache.log" 2>&1
run() {  # run NAME [distill flags]
  local name=$1; shift
  [ -f "$R/$name/metrics.json" ] && return 0
  local resume=(); [ -d "$R/$name/checkpoint" ] && resume=(--resume)
  wavedistill distill "${RECIPE[@]}" --output-dir "$R/$name" "${resume[@]}" "$@" > "$R/$name.log" 2>&1
}
run online --train-windows fixed &
run cached --teacher-cache "$R/cache" &
wait
run online_random
python - "$R" <<'PY'
import json, sys
r = sys.argv[1]
cache = json.load(open(f"{r}/cache/cache.json"))
m = {name: json.load(open(f"{r}/{name}/metrics.json")) for name in ("online", "cached", "online_random")}
print(f"cache: top-{cache['top_k']}, {cache['n_windows']} windows x {cache['seq_len']} = {cache['n_tokens']:,} tokens, "
      f"{cache['bytes_per_token']} bytes per token ({cache['bytes'] / 2**20:.1f} MiB), teacher "
      f"{cache['teacher_tokens_per_s']:,.0f} tokens/s, written in {cache['wall_s']} s")
for name, x in m.items():
    s = x["stages"][-1]
    print(f"{name:14s} test KL {x['kl']:.4f}  top-5 overlap {x['top5_overlap']:.4f}  {s['tokens_per_s']:,.0f} tokens/s "
          f"({s['tokens']:,} tokens in {s['train_wall_s']} s of training), selected step {x['selected_step']}")
ratio = m["cached"]["kl"] / m["online"]["kl"]
print(f"cached / online test KL = {ratio:.4f} ({100 * (ratio - 1):+.2f} %; the bar: within 2 %)")
print(f"cached / online tokens/s = {m['cached']['stages'][-1]['tokens_per_s'] / m['online']['stages'][-1]['tokens_per_s']:.3f}")
print(f"online (fixed windows) / online (random offsets) test KL = {m['online']['kl'] / m['online_random']['kl']:.4f}")
PY
