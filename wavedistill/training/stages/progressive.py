"""The ``progressive`` stage: replace layers one group at a time, fine-tuning end to end after each swap.

At the start every converted layer goes back to the teacher's attention (its mixer is kept aside,
trained as far as earlier stages took it). Groups are then swapped in, in the configured order
(``easiest_first`` ranks layers by their held-out transfer loss); after each swap the student
trains ``steps_per_swap`` steps with the kd loss and is scored on val. If that val KL exceeds
``kl_budget`` the last swap is undone (the student goes back to its state before the swap; the
first group is always kept) and the stage stops: the layers never swapped stay softmax attention,
a hybrid.
"""

from __future__ import annotations

from ...io import load_adapter_weights
from ...surgery import attach_wave, detach_wave, wave_attention_modules
from ..checkpoint import trainable_state
from ..loop import evaluate, log_candidate, train_steps
from ..schedules import layer_groups, layer_order
from .kd import kd_objective
from .transfer import held_out_layer_losses


def run_progressive(run, stage) -> dict:
    resumed = run.resuming()
    if resumed is None:
        modules = wave_attention_modules(run.student)
        losses = held_out_layer_losses(run.teacher, {i: m.mixer for i, m in modules.items()}, run.val_windows,
                                       device=run.device)
        groups = layer_groups(layer_order(sorted(modules), stage.order, losses), stage.group_size)
        run.pending.update(detach_wave(run.student, sorted(modules)))
        first, snapshot = 0, None
    else:  # the checkpoint put the student back in shape (swapped layers converted, the rest pending)
        state = resumed["stage_state"]
        losses = {int(i): v for i, v in state["losses"].items()}
        groups, first, snapshot, history = state["groups"], state["group"], state["snapshot"], state["history"]
    if resumed is None:
        history = []
    n_steps = stage.steps_per_swap
    summary = {"steps": 0, "tokens": 0, "train_wall_s": 0.0}
    for g in range(first, len(groups)):
        if run.resuming(g) is None:
            snapshot = trainable_state(run) if g > 0 else None
            attach_wave(run.student, {i: run.pending.pop(i) for i in groups[g]})
            run.reset_selection()
            log_candidate(run)

        def extra_state(g=g, snapshot=snapshot):
            return {"stage_state": {"groups": groups, "group": g, "snapshot": snapshot, "history": history,
                                    "losses": {str(i): v for i, v in losses.items()}}}

        params = [p for p in run.student.parameters() if p.requires_grad]
        part = train_steps(run, g, params, n_steps, stage.lr or run.cfg.lr, kd_objective(run, stage, n_steps),
                           extra_state=extra_state)
        for k in ("steps", "tokens", "train_wall_s"):
            summary[k] += part[k]
        summary["trainable_params"] = part["trainable_params"]
        val_kl = part["val_kl"] if part["val_kl"] is not None else evaluate(run)["val_kl"]
        history.append({"group": groups[g], "val_kl": val_kl})
        if stage.kl_budget and val_kl > stage.kl_budget and g > 0:
            # Over budget: undo this swap and stop; the student before it is the stage's result.
            run.pending.update(detach_wave(run.student, groups[g]))
            load_adapter_weights(run.student, snapshot, "the state before the last swap")
            history[-1]["undone"] = True
            run.reset_selection()
            log_candidate(run)
            break
    summary["tokens_per_s"] = round(summary["tokens"] / summary["train_wall_s"], 1) if summary["train_wall_s"] else None
    swapped = sorted(wave_attention_modules(run.student))
    kept = sorted(run.pending)
    run.pending.clear()  # never swapped in: these layers stay attention
    return {**summary, "order": [i for grp in groups for i in grp], "val_layer_transfer_loss":
            {str(i): v for i, v in losses.items()}, "swaps": history, "converted": swapped, "kept_attention": kept}
