"""A smaller student distilled from stories260K vs the same architecture trained with CE only (issue 11, item 5).

usage: python scripts/student_stories260k.py [RUNS_DIR] [--jobs 2]      (needs ../shared; ~1 hour on 2 cores)

Student: the `compressed` preset of the teacher (3 of 5 layers by the uniform map [1, 2, 4], hidden 32 of 64,
4 / 2 of 8 / 4 heads, MLP 86 of 172: 50,592 of 260,160 parameters), initialised by weight selection from the
teacher. Two objectives on the same tokens (same seed = same batches), same steps:
  kd  0.9 forward KL + 0.1 CE (the run default)
  ce  CE only (kl_weight 0): the control
Each objective's lr is chosen from 1e-3 / 3e-3 on val (selected val KL) with seed 100; seeds 0, 1, 2 are
reported on the test split. A wave student (rotary_gla with feature_dim 64, the best softmax-free mixer of
the mixer work, in all 3 layers) is distilled the same way (kd, the kd lr, seeds 0-2) and compared with its
untrained start. Every run is an ordinary `wavedistill kd` run; finished runs are skipped, so the script
can be rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from wavedistill.core.sweep import check_lr_seed, choose, mean_sd

TEACHER = "../shared/teachers/stories260K"
DATA = "../shared/corpora/tinystories/stories.txt"
STEPS = 800
OBJECTIVES = {"kd": ["--kl-weight", "0.9", "--ce-weight", "0.1"], "ce": ["--kl-weight", "0", "--ce-weight", "1"]}
STUDENTS = {"attention": [], "rotary_gla": ["--student-mixer", "rotary_gla", "--mixer-kwargs", '{"feature_dim": 64}']}
LRS = ("1e-3", "3e-3")
SEEDS = (0, 1, 2)
LR_SEED = 100


def run(out: str, args: list[str], steps: int | None = STEPS) -> dict:
    """One `wavedistill kd` run into ``out`` (skipped if it finished); ``steps=None`` for a recipe with stages."""
    metrics = os.path.join(out, "metrics.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not os.path.isfile(metrics):
        resume = ["--resume"] if os.path.isdir(os.path.join(out, "checkpoint")) else []
        cmd = ["wavedistill", "kd", "--teacher", TEACHER, "--data", DATA, "--student", "compressed",
               *(["--max-steps", str(steps)] if steps else []), "--batch-size", "16", "--seq-len", "256",
               "--eval-every", "100", "--save-every", "200", "--output-dir", out, *resume, *args]
        with open(out + ".log", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(metrics) as f:
        return json.load(f)


def runs_root_and_pool() -> tuple[str, ThreadPoolExecutor]:
    """The command line ``[RUNS_DIR] [--jobs N]``: the folder of the runs and a pool of N concurrent runs."""
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="?", default="runs")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    root = os.path.join(a.runs, "student_stories260k")
    os.makedirs(root, exist_ok=True)
    return root, ThreadPoolExecutor(a.jobs)


def over_seeds(metrics: list[dict], key: str, fmt: str) -> str:
    """``mean ± sd`` of one metric over the seeds' runs."""
    return mean_sd([m[key] for m in metrics], fmt)


def main() -> None:
    root, pool = runs_root_and_pool()

    # 1. lr per objective, on val, seed 100 (attention student); the untrained student for reference.
    sweep = {(obj, lr): pool.submit(run, f"{root}/lr/{obj}_lr{lr}", [*OBJECTIVES[obj], "--lr", lr,
                                                                       "--seed", str(LR_SEED)])
             for obj in OBJECTIVES for lr in LRS}
    untrained = pool.submit(run, f"{root}/untrained", ["--no-train"])
    untrained_wave = pool.submit(run, f"{root}/rotary_gla_untrained", [*STUDENTS["rotary_gla"], "--no-train"])
    check_lr_seed(LR_SEED, SEEDS)
    chosen = {}
    for obj in OBJECTIVES:
        vals = {lr: sweep[obj, lr].result()["selected_val_kl"] for lr in LRS}
        chosen[obj] = choose(vals, lambda kl: kl)
        print(f"lr for {obj}: {chosen[obj]} (val KL {', '.join(f'{lr}: {v:.4f}' for lr, v in vals.items())})")

    # 2. seeds 0-2, both objectives, both students, at the chosen lr.
    arms = [(st, obj) for st in STUDENTS for obj in OBJECTIVES if st == "attention" or obj == "kd"]
    jobs = {(st, obj, s): pool.submit(run, f"{root}/{st}_{obj}_s{s}",
                                      [*OBJECTIVES[obj], *STUDENTS[st], "--lr", chosen[obj], "--seed", str(s)])
            for st, obj in arms for s in SEEDS}
    for name, job in (("attention", untrained), ("rotary_gla", untrained_wave)):
        u = job.result()
        print(f"untrained compressed {name} student (weight selection): test top-5 {u['top5_overlap']:.3f}, "
              f"KL {u['kl']:.3f}, ppl {u['ppl_student']:.2f}; teacher ppl {u['ppl_teacher']:.2f}; "
              f"{u['positions']:,} positions")
    print("\n| student | objective | lr | seeds | test top-5 overlap | test KL | test ppl | params |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for st, obj in arms:
        ms = [jobs[st, obj, s].result() for s in SEEDS]
        print(f"| {st} | {obj} | {chosen[obj]} | {len(ms)} | {over_seeds(ms, 'top5_overlap', '.3f')} | "
              f"{over_seeds(ms, 'kl', '.3f')} | {over_seeds(ms, 'ppl_student', '.2f')} | "
              f"{ms[0]['student']['params']:,} |")
    print("\nper seed (top-5 / KL / ppl):")
    for (st, obj, s), job in jobs.items():
        m = job.result()
        print(f"  {st:10s} {obj} seed {s}: {m['top5_overlap']:.3f} / {m['kl']:.3f} / {m['ppl_student']:.2f}  "
              f"(selected step {m['selected_step']}, {m['positions']:,} positions)")


if __name__ == "__main__":
    sys.exit(main())
