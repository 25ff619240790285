"""Recall vs distance for a teacher and its students, from evaluation-suite results (``eval --suite recall``):
left, top-1 agreement with the teacher on the copies that need the context, by distance back to the last
occurrence (the teacher is 1 by definition); right, the name passkey's accuracy by the filler tokens between the
name and the question (teacher, no-mixing baseline and each student; chance 0.2). Error bars: one standard error.

usage: python scripts/recall_plot.py OUT.png NAME=RUN [NAME=RUN ...]     (each RUN holds suite/recall.json)
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recall_targets import recall_of  # noqa: E402  (scripts/ is on the path when this file runs as a script)


def main(out: str, named: list[str]) -> None:
    runs = [a.split("=", 1) for a in named]
    if not runs or any(len(r) != 2 for r in runs):
        sys.exit(__doc__)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, run) in enumerate(runs):
        r = recall_of(run)
        cp = r["copy_positions"]
        rows = cp["agreement_needs_context"]["student"]
        x = range(len(cp["buckets"]))
        left.errorbar(x, [rows[b]["value"] for b in cp["buckets"]], yerr=[rows[b]["se"] for b in cp["buckets"]],
                      marker="o", capsize=3, color=f"C{i + 1}", label=name)
        fillers = r["passkey"]["forms"]["name"]["fillers"]
        F = sorted(fillers, key=int)
        models = [("student", name, f"C{i + 1}")] + ([("teacher", "teacher", "C0"), ("no_mixing", "no mixing", "C7")]
                                                    if i == 0 else [])
        for key, label, color in models:
            right.errorbar([int(v) for v in F], [fillers[v][key]["value"] for v in F],
                           yerr=[fillers[v][key]["se"] for v in F], marker="o", capsize=3, color=color, label=label)
    left.axhline(1.0, color="C0", alpha=0.5, label="teacher")
    left.set_xticks(list(x), [f"{b}" for b in cp["buckets"]])
    left.set(xlabel="distance back to the last occurrence (tokens)", ylabel="top-1 agreement with the teacher",
             title="copies that need the context")
    right.axhline(r["passkey"]["chance"], color="gray", linestyle=":", label="chance")
    right.set(xlabel="filler tokens between the name and the question", ylabel="accuracy (likeliest of 5 names)",
              title="passkey, name form")
    right.set_xticks([int(v) for v in F])
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"written to {out}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
