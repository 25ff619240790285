"""Attention-map matching: a student's softmax attention patterns against its teacher's (MiniLM, Wang et al.
2020; MOHAWK's "matrix orientation" stage).

Maps come from Hugging Face's eager attention (the implementation that returns them), (B, H, T, T), each
row a distribution over keys <= t. Student layer i is matched to teacher layer ``layer_map[i]``; heads
correspond in one of two ways (``heads``):

* ``head`` -- student head h <-> teacher head h. Weight selection keeps the teacher's first heads
  (:mod:`wavedistill.student`), so these start as the same head.
* ``group`` -- the teacher's heads split into H_s contiguous groups, student head h <-> the mean map of
  group h. With H_s = the teacher's KV heads these are exactly its GQA groups (the query heads that share
  one key / value head).

The loss per query row is ``kl`` = KL(teacher row || student row) or ``mse`` over the row's keys, averaged
over real query positions, heads and layers.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .errors import WavedistillError
from .losses import masked_mean

MAP_LOSSES = ("kl", "mse")
HEAD_MATCHING = ("head", "group")


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Temporarily run ``model`` with eager attention, the implementation that returns attention maps."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def teacher_heads(teacher_map: Tensor, n_student_heads: int, heads: str) -> Tensor:
    """(B, H_t, T, T) -> (B, H_s, T, T): the teacher map each student head is matched to."""
    H_t = teacher_map.shape[1]
    if heads == "head":
        if n_student_heads > H_t:
            raise WavedistillError(f"head matching pairs student head h with teacher head h: the student has "
                                   f"{n_student_heads} heads, the teacher {H_t}")
        return teacher_map[:, :n_student_heads]
    if heads == "group":
        if H_t % n_student_heads:
            raise WavedistillError(f"group matching splits the teacher's {H_t} heads into {n_student_heads} equal "
                                   "groups; give the student a head count that divides the teacher's")
        B, _, T, S = teacher_map.shape
        return teacher_map.view(B, n_student_heads, H_t // n_student_heads, T, S).mean(2)
    raise WavedistillError(f"unknown head matching {heads!r}; known: {', '.join(HEAD_MATCHING)}")


def attention_map_loss(student_maps: tuple, teacher_maps: tuple, layer_map: list[int], kind: str = "kl",
                       heads: str = "head", mask: Tensor | None = None) -> Tensor:
    """Mean over matched layers, heads and real query rows of the per-row ``kind`` loss (see module docstring).

    ``student_maps`` / ``teacher_maps``: HF ``attentions`` (one (B, H, T, T) map per layer); mask (B, T), True = real.
    """
    if kind not in MAP_LOSSES:
        raise WavedistillError(f"unknown attention-map loss {kind!r}; known: {', '.join(MAP_LOSSES)}")
    losses = []
    for i, j in enumerate(layer_map):
        s = student_maps[i].float()  # (B, H_s, T, T)
        t = teacher_heads(teacher_maps[j].float(), s.shape[1], heads)
        if kind == "kl":
            # xlogy: a key the teacher gives no weight (the future, padding) contributes 0.
            per_row = (torch.xlogy(t, t) - torch.xlogy(t, s.clamp_min(1e-30))).sum(-1)  # (B, H, T)
        else:
            per_row = (s - t).pow(2).mean(-1)
        losses.append(masked_mean(per_row.mean(1), mask))  # over heads, then real query rows
    return torch.stack(losses).mean()
