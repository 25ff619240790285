"""Several seeds of one lab run (``wavedistill lab TASK``) and a sweep over mixers (``wavedistill lab compare``).

A run folder holds one ``seed_<k>/`` per seed (see :mod:`wavedistill.lab.train`), ``summary.json``
(the resolved config, per-seed results and their median / [min, max]) and ``plots/``. A seed whose
folder already holds a ``summary.json`` for the same settings is reused, so an interrupted sweep
picks up where it stopped; a folder holding other settings is refused, never overwritten.
Seeds (and, in a sweep, mixers) run in ``jobs`` processes at once, one CPU thread each.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import torch
import yaml
from accelerate import PartialState

from ..core.sweep import check_lr_seed, choose, fmt_spread, spread
from ..errors import WavedistillError
from ..version import __version__
from .analysis import analyze, plot_compare
from .config import LabConfig, make_lab_config, resolve, upgraded
from .tasks import TASKS
from .train import train_seed

SETTINGS_IGNORED = ("seeds", "jobs", "output_dir", "device")  # they do not change what one seed computes


def seed_dir(cfg: LabConfig, seed: int) -> str:
    return os.path.join(cfg.output_dir, f"seed_{seed}")


def settings(cfg: LabConfig) -> dict:
    values = dataclasses.asdict(resolve(cfg))
    return yaml.safe_load(yaml.safe_dump({k: v for k, v in values.items() if k not in SETTINGS_IGNORED}))


def finished_seed(cfg: LabConfig, seed: int) -> dict | None:
    """The seed's summary if its folder holds a finished run of these settings; refuse other settings."""
    folder = seed_dir(cfg, seed)
    if not os.path.isfile(os.path.join(folder, "config.yaml")):
        return None
    with open(os.path.join(folder, "config.yaml")) as f:
        saved = upgraded(yaml.safe_load(f))
    wanted = settings(cfg)
    differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if differ:
        raise WavedistillError(f"{folder!r} holds a run with other settings ({', '.join(differ)}); "
                               "choose another --output-dir")
    path = os.path.join(folder, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _train(job: tuple[dict, int]) -> dict:
    torch.set_num_threads(1)
    changes, seed = job
    cfg = make_lab_config(changes)
    return train_seed(cfg, seed, seed_dir(cfg, seed))


def run_jobs(cfgs: list[LabConfig], jobs: int) -> None:
    """Train every (config, seed) not finished yet, ``jobs`` at a time."""
    todo = [(dataclasses.asdict(c), s) for c in cfgs for s in c.seeds if finished_seed(c, s) is None]
    for changes, seed in todo:
        folder = seed_dir(make_lab_config(changes), seed)
        print(f"lab: {changes['task']} / {changes['mixer']} / seed {seed} -> {folder}")

    # Under a multi-process launcher the processes train each seed together (DDP), one seed at a time.
    if jobs <= 1 or len(todo) <= 1 or PartialState().num_processes > 1:
        for job in todo:
            _train(job)
        return

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in pool.map(_train, todo):
            pass


def aggregate(cfg: LabConfig) -> dict:
    """summary.json of a run folder from its seeds' summaries."""
    seeds = {s: finished_seed(cfg, s) for s in cfg.seeds}
    keys = ["grok_step", "memorization_step", "final_train_acc", "final_test_acc", "final_test_loss", "steps_per_s",
            "final_test_bpc", "final_test_ppl", "final_val_loss", "final_val_ppl", "final_test_mse_vs_teacher",
            "final_test_kl_vs_teacher", "train_tokens_per_s", "infer_tokens_per_s"]
    summary = {"task": cfg.task, "mixer": cfg.mixer, "wavedistill_version": __version__,
               "config": dataclasses.asdict(resolve(cfg)),
               "seeds": {str(s): v for s, v in seeds.items()},
               "grokked": sum(v["grok_step"] is not None for v in seeds.values()), "n_seeds": len(seeds),
               "params": next(iter(seeds.values()))["params"], "kind": TASKS[cfg.task].kind,
               **{k: spread([v.get(k) for v in seeds.values()]) for k in keys}}
    with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def run_lab(cfg: LabConfig) -> dict:
    # No folder before the first seed starts (each seed makes its own): a run refused at the start leaves nothing.
    run_jobs([cfg], cfg.jobs)
    summary = aggregate(cfg)
    analyze(cfg.output_dir)
    print(summary_line(summary))
    return summary


def summary_line(s: dict) -> str:
    if s.get("kind") == "regress":
        versus = s.get("final_test_mse_vs_teacher")
        return (f"{s['task']} / {s['mixer']}: test MSE {fmt_spread(s['final_test_loss'], '{:.4f}')}"
                + (f", MSE vs teacher {fmt_spread(versus, '{:.4f}')}" if versus else "")
                + f", within tolerance {fmt_spread(s['final_test_acc'], '{:.3f}')}, {s['params']:,} params, "
                f"{fmt_spread(s['steps_per_s'], '{:.1f}')} steps/s")
    return (f"{s['task']} / {s['mixer']}: grokked {s['grokked']}/{s['n_seeds']}, "
            f"grok step {fmt_spread(s['grok_step'])}, "
            f"final test acc {fmt_spread(s['final_test_acc'], '{:.3f}')}, {s['params']:,} params, "
            f"{fmt_spread(s['steps_per_s'], '{:.1f}')} steps/s")


def compare_table(summaries: list[dict]) -> str:
    """One Markdown row per mixer: median [min, max] over seeds."""
    task = summaries[0]["task"]
    head = ["mixer", "params", "lr", "seeds"]
    head += {"charlm": ["val bits/char"], "stories": ["test ppl", "val ppl", "train tokens", "train tok/s"]}.get(
        task, ["reached test acc ≥ thr.", "step reached (grok step)", "memorisation step", "final test acc"])
    head += ["final train acc", "steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for s in summaries:
        cells = [f"`{s['mixer']}`", f"{s['params']:,}", f"{s['config']['lr']:g}", str(s["n_seeds"])]
        if task == "charlm":
            cells.append(fmt_spread(s["final_test_bpc"], "{:.3f}"))
        elif task == "stories":
            first = next(iter(s["seeds"].values()))
            cells += [fmt_spread(s["final_test_ppl"], "{:.2f}"), fmt_spread(s["final_val_ppl"], "{:.2f}"),
                      f"{first['train_tokens']:,}", fmt_spread(s["train_tokens_per_s"])]
        else:
            cells += [f"{s['grokked']}/{s['n_seeds']}", fmt_spread(s["grok_step"]), fmt_spread(s["memorization_step"]),
                      fmt_spread(s["final_test_acc"], "{:.3f}")]
        cells += [fmt_spread(s["final_train_acc"], "{:.3f}"), fmt_spread(s["steps_per_s"], "{:.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def choose_lrs(changes: dict, mixers: list[str], output_dir: str, lrs: list[float], lr_seed: int) -> dict[str, float]:
    """Each mixer's learning rate among ``lrs``, chosen on a held-out seed (Zoology tunes lr per mixer).

    Every (mixer, lr) trains once with seed ``lr_seed``, whose data and initialisation are drawn apart
    from the reported seeds'; the lr with the best final score of *that* run is used for the reported seeds:
    the lowest val loss where the task has a val split (``stories``: its val documents, never its test), else
    the best test accuracy of that seed's own data (lowest bits per character for char-LM; then lowest loss).
    ``lr_search.md`` lists all.
    """
    check_lr_seed(lr_seed, changes.get("seeds", [0]))
    trials = {(m, lr): make_lab_config({**changes, "mixer": m, "lr": lr, "seeds": [lr_seed],
                                         "output_dir": os.path.join(output_dir, "lr_search", m, f"lr{lr:g}")})
              for m in mixers for lr in lrs}
    for c in trials.values():
        os.makedirs(c.output_dir, exist_ok=True)
    run_jobs(list(trials.values()), next(iter(trials.values())).jobs)
    results = {key: finished_seed(c, lr_seed) for key, c in trials.items()}

    on_val = all(r.get("final_val_loss") is not None for r in results.values())

    def badness(r: dict) -> tuple:
        if on_val:
            return (r["final_val_loss"],)
        score = r.get("final_test_bpc") if r.get("final_test_bpc") is not None else -r["final_test_acc"]
        return score, r.get("final_test_loss") or 0.0

    chosen = {m: choose({lr: results[m, lr] for lr in lrs}, badness) for m in mixers}
    if on_val:
        lines = [f"lr chosen per mixer on seed {lr_seed} by the final val loss (val documents; test unseen)\n",
                 "| mixer | lr | final val loss | final val ppl | chosen |", "|---|---:|---:|---:|---|"]
        cells = {key: (r["final_val_loss"], r.get("final_val_ppl") or float("nan")) for key, r in results.items()}
    else:
        lines = [f"lr chosen per mixer on seed {lr_seed} (final test metric of that seed's own held-out data)\n",
                 "| mixer | lr | final test acc | final test loss | chosen |", "|---|---:|---:|---:|---|"]
        cells = {key: (r["final_test_acc"], r.get("final_test_loss") or float("nan")) for key, r in results.items()}
    for (m, lr), (a, b) in cells.items():
        lines.append(f"| `{m}` | {lr:g} | {a:.3f} | {b:.3f} | {'✓' if chosen[m] == lr else ''} |")
    with open(os.path.join(output_dir, "lr_search.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return chosen


def run_compare(changes: dict, mixers: list[str], output_dir: str, lrs: list[float] | None = None,
                lr_seed: int = 100) -> str:
    if not mixers:
        raise WavedistillError("--mixers is empty; name at least one, e.g. --mixers attention,learned_gate")
    chosen = choose_lrs(changes, mixers, output_dir, lrs, lr_seed) if lrs else {}
    cfgs = [make_lab_config({**changes, "mixer": m, "output_dir": os.path.join(output_dir, m),
                             **({"lr": chosen[m]} if chosen else {})}) for m in mixers]
    for c in cfgs:
        os.makedirs(c.output_dir, exist_ok=True)
    run_jobs(cfgs, cfgs[0].jobs)
    summaries = [aggregate(c) for c in cfgs]
    for c in cfgs:
        analyze(c.output_dir)
    table = compare_table(summaries)
    with open(os.path.join(output_dir, "compare.md"), "w") as f:
        f.write(table)
    plot_compare(cfgs, os.path.join(output_dir, "compare.png"))
    print(table)
    return table
