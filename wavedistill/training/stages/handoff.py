"""The ``handoff`` stage: run attention and mixer in parallel and hand the layer over on a schedule.

Each converted layer outputs ``(1 - w) * attention + w * mixer``. ``w = a``, or with
``learned_gate`` ``w = a + a (1 - a) tanh(g)`` with one learned ``g`` per layer (a convex mix the
student may tilt, pinned to the schedule's endpoints). ``a`` follows
:func:`wavedistill.training.schedules.handoff_weights`: the update at stage step s uses
``a = ramp((s + 1) / (ramp_frac * steps))`` for every layer (``together``) or per layer in turn
(``sequential``), so it is 1 for the last ``1 - ramp_frac`` of the stage, where the mixers train alone.
The teacher's attention is frozen and its weights are never saved: at the end the hand-off is
switched off and the gates removed, so the stage's result is teacher-free. Val scores and
selection always measure that teacher-free student.
"""

from __future__ import annotations

import torch

from ...surgery import (add_handoff_gates, handoff_gate_parameters, remove_handoff_gates, set_handoff,
                        wave_attention_modules)
from ..loop import train_steps
from ..schedules import handoff_weights, layer_order
from .kd import kd_objective


def run_handoff(run, stage) -> dict:
    layers = layer_order(sorted(wave_attention_modules(run.student)), stage.order)
    gates = add_handoff_gates(run.student) if stage.learned_gate else []
    resumed = run.resuming(0)
    if resumed is not None and gates:
        with torch.no_grad():
            for name, p in handoff_gate_parameters(run.student).items():
                p.copy_(resumed["handoff_gates"][name])

    def before_step(s: int) -> None:
        for i, a in handoff_weights(s, stage.steps, layers, stage.schedule, stage.mode, stage.ramp_frac).items():
            set_handoff(run.student, a, [i])

    kd = kd_objective(run, stage, stage.steps)

    def loss_fn(batch: dict, s: int) -> dict:
        losses = kd(batch, s)
        for i, m in wave_attention_modules(run.student).items():  # the schedule, logged
            losses[f"handoff_a_{i}"] = torch.tensor(m.handoff)
        return losses

    def extra_state() -> dict:
        return {"handoff_gates": {k: v.detach().cpu().clone() for k, v in handoff_gate_parameters(run.student).items()}}

    params = [p for p in run.student.parameters() if p.requires_grad]
    summary = train_steps(run, 0, params, stage.steps, stage.lr or run.cfg.lr, loss_fn, before_step=before_step,
                          extra_state=extra_state)
    final_gates = {k: round(float(torch.tanh(v.detach())), 4) for k, v in handoff_gate_parameters(run.student).items()}
    set_handoff(run.student, None)
    remove_handoff_gates(run.student)
    return {**summary, "layer_order": layers, "tanh_gates_at_end": final_gates or None}
