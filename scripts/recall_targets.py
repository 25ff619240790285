"""The recall targets of issue 20 from evaluation-suite results (``eval --suite recall``): per student,

* repeated held-out passages, L = 32, 64, 128: the student's second-copy gain as a share of the teacher's
  (target >= 90 %), ± its standard error from the passages' spread;
* copies that need the context, by distance back: top-1 agreement with the teacher in each bucket as a share of the
  student's agreement over all positions (target >= 90 % in every bucket).

usage: python scripts/recall_targets.py RUN [RUN ...]     (each RUN holds suite/recall.json, or is that folder)
"""

from __future__ import annotations

import json
import os
import sys


def recall_of(path: str) -> dict:
    for candidate in (os.path.join(path, "suite", "recall.json"), os.path.join(path, "recall.json")):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
    sys.exit(f"recall_targets: no suite/recall.json in {path!r}; run `wavedistill eval --student {path} --suite recall`")


def ratio(student: dict, teacher: dict) -> tuple[float, float]:
    """student / teacher gain and its standard error (first-order, the two estimates independent)."""
    r = student["value"] / teacher["value"]
    return r, abs(r) * ((student["se"] / student["value"]) ** 2 + (teacher["se"] / teacher["value"]) ** 2) ** 0.5


def main(runs: list[str]) -> None:
    lengths = ("32", "64", "128")
    head = None
    for run in runs:
        r = recall_of(run)
        rep, cp = r["repeated_passages"]["lengths"], r["copy_positions"]
        gains = [ratio(rep[L]["student"]["gain"], rep[L]["teacher"]["gain"]) for L in lengths]
        every = cp["agreement_all"]["student"]["value"]
        buckets = cp["buckets"]
        shares = [cp["agreement_needs_context"]["student"][b]["value"] / every for b in buckets]
        if head is None:
            head = (["student"] + [f"repeat gain L={L} / teacher's" for L in lengths] + ["top-1 all"]
                    + [f"copy d {b} / all" for b in buckets] + ["targets met"])
            print("| " + " | ".join(head) + " |\n|---" + "|---:" * (len(head) - 1) + "|")
        met = all(g >= 0.9 for g, _ in gains) and all(s >= 0.9 for s in shares)
        print(f"| {run} | " + " | ".join(f"{g:.0%} ± {e:.0%}" for g, e in gains) + f" | {every:.3f} | "
              + " | ".join(f"{s:.0%}" for s in shares) + f" | {'yes' if met else 'no'} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
