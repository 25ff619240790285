"""Lab distillation: a trained lab model teaches a different (smaller, other-mixer) lab model.

    total = task_weight * task loss (ground truth) + output_weight * output loss + hidden_weight * feature loss

* output loss: mean squared error to the teacher's predictions (regression tasks), or
  ``T^2 KL(p_teacher || p_student)`` at temperature T over the scored targets (token tasks);
* feature loss: mean over student blocks i of the MSE between block i's output (through a learned
  linear map where the widths differ, :class:`wavedistill.kd.features.FeatureProjection`) and the output of
  teacher block ``layer_map[i]`` (:mod:`wavedistill.training.layer_map`); ``relative_mse`` (default) divides each
  layer's MSE by the teacher block output's mean square. The residual stream grows with depth to mean
  squares in the hundreds, so the plain MSE outweighed the output losses about 300 to 1 on event_hold
  (docs/lab.md) and the weights no longer meant what they said; the relative MSE is scale-free.

The teacher is a finished lab seed folder (``config.yaml`` + ``model.safetensors``) of the same task
and task options; it is frozen and runs without gradients. The student trains on the teacher's data
seed (its held-out split is the teacher's too, so no test row was seen by either); the run seed sets
the student's initialisation and batch order.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor

from ..errors import WavedistillError
from ..kd.features import hidden_state_loss
from ..kd.losses import kl_teacher_student
from .config import LabConfig, make_lab_config, upgraded
from .model import build_model


def teacher_config(folder: str) -> tuple[LabConfig, int]:
    """(the teacher's lab config, its data seed) from a seed folder; a one-line error if it is not one."""
    files = [os.path.join(folder, n) for n in ("config.yaml", "model.safetensors")]
    if not all(os.path.isfile(f) for f in files):
        raise WavedistillError(f"--teacher {folder!r} is not a finished lab seed folder (config.yaml and "
                               "model.safetensors); train the teacher with `wavedistill lab TASK --mixer NAME` and "
                               "pass its seed_<k> folder")
    with open(files[0]) as f:
        saved = upgraded(yaml.safe_load(f))
    fields = {f.name for f in dataclasses.fields(LabConfig)}
    changes = {k: v for k, v in saved.items() if k in fields and k not in ("teacher", "preset", "data_seed")}
    # how the teacher was trained is not its architecture
    changes.update(task_weight=None, output_weight=None, hidden_weight=None)
    return make_lab_config(changes), saved.get("task_data_seed", saved["seed"])


def load_teacher(cfg: LabConfig, task, device) -> torch.nn.Module:
    """The frozen teacher of ``cfg``, checked against the student's task."""

    tcfg, _ = teacher_config(cfg.teacher)
    if tcfg.task != cfg.task or tcfg.task_kwargs != cfg.task_kwargs:
        raise WavedistillError(f"the teacher {cfg.teacher!r} was trained on task {tcfg.task} {tcfg.task_kwargs}, the "
                               f"student runs {cfg.task} {cfg.task_kwargs}; distil on the teacher's task and options")
    teacher = build_model(tcfg, task)
    teacher.load_state_dict(load_file(os.path.join(cfg.teacher, "model.safetensors")))
    return teacher.to(device).eval().requires_grad_(False)


def data_seed(cfg: LabConfig, seed: int) -> int:
    """The seed of the task's data: the teacher's with a teacher (else its test rows could be student training
    rows, or the reverse), else ``data_seed`` or the run seed."""
    if not cfg.teacher:
        return seed if cfg.data_seed is None else cfg.data_seed
    _, teacher_seed = teacher_config(cfg.teacher)
    if cfg.data_seed is not None and cfg.data_seed != teacher_seed:
        raise WavedistillError(f"--data-seed {cfg.data_seed} differs from the teacher's data seed {teacher_seed}: the "
                               "student's held-out rows could be the teacher's training rows; leave it unset")
    return teacher_seed


def output_loss(kind: str, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """MSE to the teacher's predictions (regression), else T^2 KL(teacher || student) at T, mean over targets."""
    if kind == "regress":
        return (student.float() - teacher.float()).pow(2).mean()
    return kl_teacher_student(teacher, student, temperature).mean() * temperature**2


def output_gap(kind: str, student: Tensor, teacher: Tensor) -> Tensor:
    """Per-target distance to the teacher for reports: squared error averaged over outputs, or KL at T = 1 (nats)."""
    if kind == "regress":
        return (student.float() - teacher.float()).pow(2).mean(-1).flatten()
    return kl_teacher_student(teacher, student, 1.0)


def block_feature_loss(student: list[Tensor], teacher: list[Tensor], projection, kind: str) -> Tensor:
    """Mean over matched blocks of the MSE (``mse``) or the MSE over the teacher's mean square (``relative_mse``)."""
    losses = []
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        mse = hidden_state_loss(projection(i, s.float()), t, "mse")
        losses.append(mse / t.float().pow(2).mean().clamp_min(1e-12) if kind == "relative_mse" else mse)
    return torch.stack(losses).mean()
