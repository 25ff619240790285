"""Checkpoints of a distillation run: ``checkpoint/`` holds an adapter of the current student (loadable with
``load_student``) and ``state.pt`` with everything needed to resume inside any stage: optimizer and
scheduler, counters, RNG states, which layers are converted, the mixers a progressive stage holds
aside (``pending``) and the stage's own state. Written to a temporary folder, then swapped in.
"""

from __future__ import annotations

import os
import random
import shutil

import torch

from ..core.run_folder import verify_checksums, write_checksums
from ..errors import WavedistillError
from ..io import (ADAPTER_WEIGHTS, adapter_state_dict, load_adapter_weights, read_adapter_weights, replace_dir,
                  write_adapter_files)
from ..surgery import converted_layers, detach_wave, unconvert


def save_checkpoint(run, extra: dict) -> None:
    """checkpoint/ = an adapter of the *current* state (loadable with load_student) + everything to resume.

    Written by the main process; every process waits until it is complete.
    """
    if run.main:
        _write_checkpoint(run, extra)
    run.acc.wait_for_everyone()


def _write_checkpoint(run, extra: dict) -> None:
    ckpt = os.path.join(run.cfg.output_dir, "checkpoint")
    tmp = ckpt + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_adapter_files(run.student, tmp, run.adapter_base, run.adapter_teacher)
    state = {"stage_index": run.stage_index, "part": None, "part_step": 0, "step": run.step, "batches": run.batches,
             "tokens_seen": run.tokens_seen, "best_val_kl": run.best[0], "best_step": run.best[1],
             "converted": converted_layers(run.student), "records": run.records, "log_rows": run.log_rows,
             "pending": {str(i): {k: v.detach().cpu() for k, v in m.mixer.state_dict().items()}
                         for i, m in run.pending.items()},
             "features": {k: v.detach().cpu() for k, v in run.features.state_dict().items()}
             if run.features is not None else None,
             "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), **extra}
    torch.save(state, os.path.join(tmp, "state.pt"))
    write_checksums(tmp, [ADAPTER_WEIGHTS, "state.pt"])
    replace_dir(tmp, ckpt)


def reopen_finished_stage(run, state: dict) -> dict:
    """A finished run resumed with more steps (a larger --max-steps): back inside its last stage, at the step it
    ended on, with its optimizer and the schedule of the new length. Without more steps the state stays as it is
    (a run killed after training and before its evaluation only evaluates)."""
    part = state.get("finished_part")
    steps = getattr(run.stages[-1], "steps", 0) if run.stages else 0
    if state["stage_index"] < len(run.stages) or not part or steps <= part["part_step"]:
        return state
    return {**state, **part, "stage_index": len(run.stages) - 1, "records": state["records"][:-1],
            "finished_part": None}


def restore_checkpoint(run) -> None:
    """Put the student back in the checkpoint's shape (converted, pending and dropped layers) and state."""
    ckpt = os.path.join(run.cfg.output_dir, "checkpoint")
    verify_checksums(ckpt, ["state.pt"])
    try:
        state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=True)
    except Exception as e:  # any unpickling failure of a damaged file: the message names it
        raise WavedistillError(f"{os.path.join(ckpt, 'state.pt')!r} is unreadable ({type(e).__name__}); the "
                               "checkpoint is damaged: restore it, or pass --overwrite to start the run again") from None
    state = reopen_finished_stage(run, state)
    pending = sorted(int(i) for i in state["pending"])
    run.pending = detach_wave(run.student, pending)
    for i, tensors in state["pending"].items():
        run.pending[int(i)].mixer.load_state_dict(tensors)
    dropped = [i for i in converted_layers(run.student) if i not in state["converted"]]
    if dropped:
        unconvert(run.student, dropped)
    load_adapter_weights(run.student, read_adapter_weights(ckpt), ckpt)
    if run.features is not None and state.get("features") is not None:
        run.features.load_state_dict(state["features"])
    torch.set_rng_state(state["torch_rng"])
    s = state["python_rng"]  # weights_only loading turns the tuple state into lists
    random.setstate((s[0], tuple(s[1]), s[2]))
    run.stage_index, run.step, run.batches, run.tokens_seen = (state["stage_index"], state["step"], state["batches"],
                                                                state["tokens_seen"])
    run.best, run.records = (state["best_val_kl"], state["best_step"]), list(state["records"])
    run.log_rows = state["log_rows"]
    run.resume_state = state


def trainable_state(run) -> dict[str, torch.Tensor]:
    """A copy of everything the student trains (to undo a progressive swap)."""
    return {k: v.clone() for k, v in adapter_state_dict(run.student).items()}
