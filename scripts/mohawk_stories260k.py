"""MOHAWK stage 1 for a smaller wave student of stories260K: does matching mixing matrices first help kd?

usage: python scripts/mohawk_stories260k.py [RUNS_DIR] [--jobs 2]      (needs ../shared; ~30 min on 2 cores)

The compressed rotary_gla student of scripts/student_stories260k.py (same flags, the kd lr chosen there on val,
3e-3), seeds 0, 1, 2, two arms with the same 1,000 optimizer steps of 16 x 256 tokens:
  mohawk   configs/mohawk_student.yaml: 200 steps matching each layer's mixing matrix to the teacher's attention
           maps (KL, first 64 positions), then 800 steps of kd (0.9 forward KL + 0.1 CE)
  kd1000   1,000 steps of kd: the control
Reported on the test split; finished runs are skipped, so the script can be rerun.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from student_stories260k import STUDENTS, over_seeds, run, runs_root_and_pool

SEEDS = (0, 1, 2)
# arm: (flags, --max-steps); the mohawk recipe's stages set its 200 + 800 steps
ARMS = {"mohawk": (["--config", "configs/mohawk_student.yaml"], None), "kd1000": ([], 1000)}


def attention_kl(out: str) -> str:
    """Stage 1's attention-map KL, mean of its first and of its last 10 steps (train batches)."""
    with open(os.path.join(out, "train_log.jsonl")) as f:
        xs = [r["attention_kl"] for r in map(json.loads, f) if "attention_kl" in r]
    return f"{statistics.mean(xs[:10]):.3f} -> {statistics.mean(xs[-10:]):.3f}" if xs else "—"


def main() -> None:
    root, pool = runs_root_and_pool()
    jobs = {(arm, s): pool.submit(run, f"{root}/rotary_gla_{arm}_s{s}",
                                  [*STUDENTS["rotary_gla"], *flags, "--kl-weight", "0.9", "--ce-weight", "0.1",
                                   "--lr", "3e-3", "--seed", str(s)],
                                  steps)
            for arm, (flags, steps) in ARMS.items() for s in SEEDS}
    print("| arm | seeds | test top-5 overlap | test KL | test ppl | val KL at the end of each stage (per seed) |")
    print("|---|---:|---:|---:|---:|---|")
    for arm in ARMS:
        ms = [jobs[arm, s].result() for s in SEEDS]
        vals = "; ".join(" -> ".join(f"{st['val_kl']:.3f}" for st in m["stages"]) for m in ms)
        print(f"| {arm} | {len(ms)} | {over_seeds(ms, 'top5_overlap', '.3f')} | {over_seeds(ms, 'kl', '.3f')} | "
              f"{over_seeds(ms, 'ppl_student', '.2f')} | {vals} |")
    print("\nper seed (top-5 / KL / ppl):")
    for (arm, s), job in jobs.items():
        m = job.result()
        print(f"  {arm:7s} seed {s}: {m['top5_overlap']:.3f} / {m['kl']:.3f} / {m['ppl_student']:.2f}  "
              f"(selected step {m['selected_step']}, {m['positions']:,} positions; stage-1 attention KL "
              f"{attention_kl(f'{root}/rotary_gla_{arm}_s{s}')})")


if __name__ == "__main__":
    sys.exit(main())
