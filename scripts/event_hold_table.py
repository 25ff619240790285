"""The docs/lab.md table of the event_hold distillation (scripts/event_hold_distill.sh): one row per run folder.

usage: python scripts/event_hold_table.py [RUNS_DIR]     (default runs/lab/event_hold)
Cells are median [min, max] over seeds; MSE is per position and output channel on the 1,000 held-out
sequences (64,000 positions) of the teacher's data seed. "predict 0" is the MSE of always answering 0.
"""

import json
import os
import sys

from wavedistill.lab.tasks import build_task

ROWS = [("teacher", "teacher: selective_s4d, 6 layers, width 64, state 32", None),
        ("kd_standard", "s4d standard (64 / 540 / 6), distilled", "control_standard"),
        ("control_standard", "s4d standard, ground truth only", None),
        ("kd_compressed", "s4d compressed (32 / 256 / 4), distilled", "control_compressed"),
        ("control_compressed", "s4d compressed, ground truth only", None),
        ("kd_tiny", "s4d tiny (24 / 128 / 3), distilled", "control_tiny"),
        ("control_tiny", "s4d tiny, ground truth only", None),
        ("kd_rawfeat_standard", "s4d standard, distilled, plain feature MSE", "control_standard"),
        ("kd_rawfeat_compressed", "s4d compressed, distilled, plain feature MSE", "control_compressed"),
        ("kd_rawfeat_tiny", "s4d tiny, distilled, plain feature MSE", "control_tiny"),
        ("kd_nofeat_compressed", "s4d compressed, distilled without the feature term (0.3 / 0.7 / 0)",
         "control_compressed"),
        ("control_tiny_selective", "selective_s4d tiny (24 / 32 / 3), ground truth only", None)]


def cell(s, key, fmt):
    v = s.get(key)
    if v is None:
        return "—"
    return f"{fmt.format(v['median'])} [{fmt.format(v['min'])}, {fmt.format(v['max'])}]"


def main(root: str) -> None:
    head = ["student", "seeds", "params", "train tok/s", "infer tok/s", "test MSE vs ground truth",
            "test MSE vs teacher", "within 0.1 of target"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    summaries = {}
    for folder, label, _ in ROWS:
        path = os.path.join(root, folder, "summary.json")
        if not os.path.isfile(path):
            print(f"missing {path}: run scripts/event_hold_distill.sh first", file=sys.stderr)
            continue
        with open(path) as f:
            s = summaries[folder] = json.load(f)
        lines.append("| " + " | ".join([label, str(s["n_seeds"]), f"{s['params']:,}",
                                        cell(s, "train_tokens_per_s", "{:,.0f}"),
                                        cell(s, "infer_tokens_per_s", "{:,.0f}"),
                                        cell(s, "final_test_loss", "{:.4f}"),
                                        cell(s, "final_test_mse_vs_teacher", "{:.4f}"),
                                        cell(s, "final_test_acc", "{:.3f}")]) + " |")
    teacher = summaries.get("teacher")
    if teacher:
        kwargs = teacher["config"]["task_kwargs"]
        seed = teacher["seeds"]["0"]["seed"]
        y = build_task("event_hold", seed, **kwargs).test_y
        lines.append(f"| predict 0 | — | 0 | — | — | {y.pow(2).mean().item():.4f} | — | "
                     f"{(y.norm(dim=-1) < 0.1).float().mean().item():.3f} |")
    print("\n".join(lines))
    for kd, _, control in ROWS:
        if control and kd in summaries and control in summaries:
            a, b = summaries[kd]["seeds"], summaries[control]["seeds"]
            wins = sum(a[k]["final_test_loss"] < b[k]["final_test_loss"] for k in a if k in b)
            print(f"{kd}: lower test MSE than {control} in {wins}/{len(a)} seeds (same seed = same init and batches)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/lab/event_hold")
