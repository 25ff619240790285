"""Intermediate-feature matching between a student and its teacher (FitNets' hint layers, Romero et al. 2015).

Student decoder layer i is matched to teacher layer ``layer_map[i]`` (:mod:`wavedistill.layer_map`;
the identity for a student converted in place). Where the widths differ, the student's hidden state
goes through a learned linear map to the teacher's width first, one per matched layer. It starts as
the transpose of weight selection: the student's unit j is the teacher's unit j
(:mod:`wavedistill.student`), so the map starts by placing each student unit on its teacher unit and
leaving the teacher's other units at zero. The projections train with the student and are not part
of it (a saved student has none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import WavedistillError

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


def feature_loss(student: list[Tensor], teacher: list[Tensor], kind: str = "mse",
                 projection: FeatureProjection | None = None, mask: Tensor | None = None) -> Tensor:
    """Mean over matched layers of ``mse`` (squared error averaged over the width) or ``cosine`` (1 - cosine
    similarity over the width), averaged over real positions; (B, T, D) tensors, mask (B, T) True = real."""
    if kind not in FEATURE_LOSSES:
        raise WavedistillError(f"unknown feature loss {kind!r}; known: {', '.join(FEATURE_LOSSES)}")
    losses = []
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        s = (projection(i, s.float()) if projection is not None else s).float()
        t = t.float()
        per_pos = (s - t).pow(2).mean(-1) if kind == "mse" else 1 - F.cosine_similarity(s, t, dim=-1)  # (B, T)
        losses.append(per_pos.mean() if mask is None else (per_pos * mask).sum() / mask.sum().clamp_min(1))
    return torch.stack(losses).mean()
