"""``wavedistill compare``: the same recipe for several mixers, one table and one learning-curve plot.

Each mixer's run is an ordinary distill run in ``OUT/<mixer>``; a folder that already holds a
finished run (``metrics.json``) is reused, and an unfinished one is resumed (from its checkpoint, or started
again when it was stopped before its first one).
The table comes from each run's ``metrics.json`` (held-out test split); the plot shows val top-5
overlap against tokens seen, from each run's ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import os

from ..errors import WavedistillError
from ..mixers import get_mixer_class
from ..training.config import check_same_run, make_config
from ..training.distill import resumable, run
from .runs import report_table


def run_compare(changes: dict, mixers: list[str], output_dir: str) -> str:
    if not mixers:
        raise WavedistillError("--mixers is empty; name at least one mixer, e.g. --mixers learned_gate,fnet")
    for name in mixers:
        get_mixer_class(name)  # unknown names fail before anything runs
    cfgs = {name: make_config({**changes, "wave_type": name, "output_dir": os.path.join(output_dir, name)})
            for name in mixers}
    for name, cfg in cfgs.items():
        if os.path.isfile(os.path.join(cfg.output_dir, "config.yaml")):
            check_same_run(cfg, "choose another --output-dir for compare")
        if os.path.isfile(os.path.join(cfg.output_dir, "metrics.json")):
            print(f"{name}: reusing the finished run in {cfg.output_dir}")
            continue
        cfg.resume = resumable(cfg.output_dir)
        run(cfg)
    rows = []
    for name, cfg in cfgs.items():
        with open(os.path.join(cfg.output_dir, "metrics.json")) as f:
            rows.append((cfg.output_dir, json.load(f)))
    table = report_table(rows)
    with open(os.path.join(output_dir, "compare.md"), "w") as f:
        f.write(table)
    plot_curves({name: read_log(cfg.output_dir) for name, cfg in cfgs.items()},
                os.path.join(output_dir, "top5_vs_tokens.png"))
    print(table)
    return table


def read_log(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(logs: dict[str, list[dict]], path: str) -> None:
    import matplotlib  # lazy: ~0.8 s of every command's start, only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, rows in logs.items():
        pts = [(r["tokens_seen"], r["val_top5"]) for r in rows if "val_top5" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
    ax.set(xlabel="tokens seen (all stages)", ylabel="top-5 overlap with the teacher (val)",
           title="held-out top-5 overlap vs tokens seen")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
