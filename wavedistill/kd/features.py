"""Intermediate-feature matching between a student and its teacher (FitNets' hint layers, Romero et al. 2015).

Student decoder layer i is matched to teacher layer ``layer_map[i]`` (:mod:`wavedistill.training.layer_map`;
the identity for a student converted in place). Where the widths differ, the student's hidden state
goes through a learned linear map to the teacher's width first, one per matched layer. It starts as
the transpose of weight selection: the student's unit j is the teacher's unit j
(:mod:`wavedistill.training.student`), so the map starts by placing each student unit on its teacher unit and
leaving the teacher's other units at zero. The projections train with the student and are not part
of it (a saved student has none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WavedistillError
from .losses import masked_mean

FEATURE_LOSSES = ("mse", "cosine")


class FeatureProjection(nn.Module):
    """One (D_student -> D_teacher) linear map per student layer; no parameters when the widths agree."""

    def __init__(self, d_student: int, d_teacher: int, n_layers: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList()
        if d_student != d_teacher:
            for _ in range(n_layers):
                lin = nn.Linear(d_student, d_teacher, bias=False)
                with torch.no_grad():
                    lin.weight.zero_()
                    n = min(d_student, d_teacher)
                    lin.weight[:n, :n] = torch.eye(n)  # (D_t, D_s): student unit j -> teacher unit j
                self.maps.append(lin)

    def forward(self, i: int, h: Tensor) -> Tensor:
        return self.maps[i](h) if len(self.maps) else h


def matched_hidden(student_hidden: tuple, teacher_hidden: tuple, layer_map: list[int]) -> tuple[list, list]:
    """HF ``hidden_states`` (embeddings first, then one per decoder layer) -> the matched (student, teacher) pairs."""
    if len(student_hidden) - 1 != len(layer_map):
        raise WavedistillError(f"the layer map has {len(layer_map)} entries for {len(student_hidden) - 1} student "
                               "layers")
    return list(student_hidden[1:]), [teacher_hidden[j + 1] for j in layer_map]


def hidden_state_loss(pred: Tensor, target: Tensor, kind: str, mask: Tensor | None = None) -> Tensor:
    """Mean over real positions of ``mse`` (squared error averaged over the width D) or ``cosine`` (1 - cosine
    similarity over D) between (B, T, D) tensors; mask (B, T), True = real. ``kind`` is checked by the caller.
    Also the transfer stage's loss (:func:`wavedistill.training.stages.transfer.transfer_loss`)."""
    pred, target = pred.float(), target.float()
    per_pos = ((pred - target) ** 2).mean(-1) if kind == "mse" else 1 - F.cosine_similarity(pred, target, dim=-1)
    return masked_mean(per_pos, mask)


def feature_loss(student: list[Tensor], teacher: list[Tensor], kind: str = "mse",
                 projection: FeatureProjection | None = None, mask: Tensor | None = None) -> Tensor:
    """Mean over matched layers of :func:`hidden_state_loss` (student through ``projection``) against the teacher."""
    if kind not in FEATURE_LOSSES:
        raise WavedistillError(f"unknown feature loss {kind!r}; known: {', '.join(FEATURE_LOSSES)}")
    losses = [hidden_state_loss(projection(i, s.float()) if projection is not None else s, t, kind, mask)
              for i, (s, t) in enumerate(zip(student, teacher, strict=True))]
    return torch.stack(losses).mean()
