"""``wavedistill lab`` and ``wavedistill analyze``: the command-line side of the lab."""

from __future__ import annotations

import argparse
import os

from ..core.configs import read_changes
from ..errors import WavedistillError
from ..lab.analysis import analyze
from ..lab.config import RENAMED, RENAMED_MESSAGES, LabConfig, make_lab_config
from ..lab.lm_report import lm_report
from ..lab.sweep import run_compare, run_lab
from ..lab.tasks import TASKS
from .argtypes import json_dict

LAB_FLAGS = {"mixer": str, "steps": int, "lr": float, "weight_decay": float, "batch_size": int, "eval_every": int,
             "d_model": int, "n_layers": int, "n_heads": int, "d_mlp": int, "stop_after_grok": int, "jobs": int,
             "device": str, "preset": str, "teacher": str, "task_weight": float, "output_weight": float,
             "hidden_weight": float, "temperature": float, "layer_map": str, "data_seed": int,
             "feature_loss": str, "positions": str, "match_params": str}
LAB_TASK_FLAGS = {"p": int, "op": str, "train_frac": float, "data": str, "seq_len": int, "n_pairs": int,
                  "length": int, "vocab": int, "event_prob": float, "omega": float, "tokenizer": str,
                  "max_val_windows": int}


def lab_changes(args, task: str) -> dict:
    """Lab config changes from --config and the flags given (flags win); task flags go to task_kwargs."""
    for old in RENAMED:
        if getattr(args, f"removed_{old}", None) is not None:
            raise WavedistillError(RENAMED_MESSAGES[old])
    changes = read_changes(args.config, LabConfig, RENAMED_MESSAGES) if args.config else {}
    changes["task"] = task
    for name in LAB_FLAGS:
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    task_kw = {**changes.get("task_kwargs", {}), **{k: getattr(args, k) for k in LAB_TASK_FLAGS
                                                    if getattr(args, k) is not None}}
    changes["task_kwargs"] = task_kw
    for name in ("mixer_kwargs", "seeds", "output_dir"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.state_dim is not None:  # a shortcut for the mixer's state size (s4d, selective_s4d)
        changes["mixer_kwargs"] = {**changes.get("mixer_kwargs", {}), "state_dim": args.state_dim}
    if args.phase_embedding:
        changes["phase_embedding"] = True
    return changes


def cmd_lab(args) -> None:
    if args.runs and args.task != "lm-report":
        raise WavedistillError(f"unexpected arguments {args.runs}: only `lab lm-report` takes run folders")
    if args.task == "lm-report":
        lm_report(args.runs, args.output_dir or "runs/lab/stories/report")
        return
    if args.task == "compare":
        if not args.compare_task or not args.mixers:
            raise WavedistillError("lab compare needs --task TASK and --mixers a,b,c")
        changes = lab_changes(args, args.compare_task)
        out = changes.pop("output_dir", None) or f"runs/lab/{args.compare_task}"
        changes.pop("mixer", None)
        lrs = [float(x) for x in args.lr_sweep.split(",") if x.strip()] if args.lr_sweep else None
        run_compare(changes, [m.strip() for m in args.mixers.split(",") if m.strip()], out, lrs, args.lr_seed)
        return
    changes = lab_changes(args, args.task)
    changes.setdefault("output_dir", f"runs/lab/{args.task}_{changes.get('mixer', 'attention')}")
    run_lab(make_lab_config(changes))


def cmd_analyze(args) -> None:
    analyze(args.run_dir)
    print(f"plots regenerated in {os.path.join(args.run_dir, 'plots')}")


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds such as 0,1,2, got {text!r}") from None


def add_lab_parsers(sub) -> None:
    p = sub.add_parser("lab", help="train wave transformers from scratch on a task, several seeds; "
                       "`lab compare --task T --mixers a,b` sweeps mixers")
    p.add_argument("task", choices=[*TASKS, "compare", "lm-report"])
    p.add_argument("runs", nargs="*", help="(lab lm-report) finished stories run folders, one table row each")
    p.add_argument("--task", dest="compare_task", choices=list(TASKS), help="(lab compare) the task to sweep")
    p.add_argument("--mixers", help="(lab compare) comma-separated mixers, e.g. attention,fnet,learned_gate")
    p.add_argument("--seeds", type=_seeds, help="comma-separated seeds (default 0)")
    p.add_argument("--lr-sweep", help="(lab compare) learning rates to try per mixer, e.g. 1e-3,3e-3; each mixer "
                   "then uses the best one on --lr-seed")
    p.add_argument("--lr-seed", type=int, default=100, help="(lab compare) the held-out seed that picks the lr")
    p.add_argument("--output-dir")
    p.add_argument("--config", help="YAML file of lab config changes; flags win")
    p.add_argument("--mixer-kwargs", type=json_dict)
    p.add_argument("--phase-embedding", action="store_true", help="modular: tokens of Z_p as fixed waves")
    p.add_argument("--state-dim", type=int, help="the mixer's state size (mixer_kwargs state_dim), e.g. for s4d")
    for name, kind in {**LAB_FLAGS, **LAB_TASK_FLAGS}.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    for old in RENAMED:  # an earlier version's flags: refused in lab_changes with the new name
        p.add_argument(f"--{old}", dest=f"removed_{old}", type=float, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_lab)

    p = sub.add_parser("analyze", help="regenerate the plots and spectra of a lab run folder")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_analyze)
