"""Attention-map matching: a student's softmax attention patterns against its teacher's (MiniLM, Wang et al.
2020; MOHAWK's "matrix orientation" stage).

Maps come from Hugging Face's eager attention (the implementation that returns them), (B, H, T, T), each
row a distribution over keys <= t. Student layer i is matched to teacher layer ``layer_map[i]``; heads
correspond in one of two ways (``heads``):

* ``head`` -- student head h <-> teacher head h. Weight selection keeps the teacher's first heads
  (:mod:`wavedistill.training.student`), so these start as the same head.
* ``group`` -- the teacher's heads split into H_s contiguous groups, student head h <-> the mean map of
  group h. With H_s = the teacher's KV heads these are exactly its GQA groups (the query heads that share
  one key / value head).

The loss per query row is ``kl`` = KL(teacher row || student row) or ``mse`` over the row's keys, averaged
over real query positions, heads and layers.

A wave-mixer student has no attention maps; its converted layers are matched through the causal matrix
each mixer applies to its values (:meth:`wavedistill.mixers.base.WaveMixer.mixing_matrix`), MOHAWK's stage 1
("matrix orientation", Bick et al. 2024). A mixer with one matrix per channel (``s4d``) matches every channel
of head h to the teacher map of head h. Only ``mse`` applies unless the mixer's rows are distributions
(``rotary_gla``); layers a wave student keeps as attention are not matched. ``window`` > 0 compares the
first ``window`` positions only (the top-left block of every map, exact under causality), which keeps the
(T x T) matrices short.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..errors import WavedistillError
from ..surgery import wave_attention_modules
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
                       heads: str = "head", mask: Tensor | None = None, student_heads: list[int] | None = None,
                       window: int = 0) -> Tensor:
    """Mean over matched layers, heads and real query rows of the per-row ``kind`` loss (see module docstring).

    ``student_maps`` / ``teacher_maps``: HF ``attentions`` (one (B, H, T, T) map per layer) or mixing matrices
    (B, G, T, T); mask (B, T), True = real. ``student_heads[i]``: the heads of student layer i when its G
    matrices are per channel (G = heads x head_dim); ``window`` > 0: the first ``window`` positions only.
    """
    if kind not in MAP_LOSSES:
        raise WavedistillError(f"unknown attention-map loss {kind!r}; known: {', '.join(MAP_LOSSES)}")
    losses = []
    for i, j in enumerate(layer_map):
        s, t = student_maps[i].float(), teacher_maps[j].float()  # (B, G, T, T), (B, H_t, T, T)
        if window:
            s, t = s[..., :window, :window], t[..., :window, :window]
        n_heads = student_heads[i] if student_heads is not None else s.shape[1]
        t = teacher_heads(t, n_heads, heads)
        if s.shape[1] != n_heads:  # one matrix per channel: each channel of head h against head h's map
            t = t.repeat_interleave(s.shape[1] // n_heads, dim=1)
        if kind == "kl":
            # xlogy: a key the teacher gives no weight (the future, padding) contributes 0.
            per_row = (torch.xlogy(t, t) - torch.xlogy(t, s.clamp_min(1e-30))).sum(-1)  # (B, H, T)
        else:
            per_row = (s - t).pow(2).mean(-1)
        rows = None if mask is None else mask[:, : per_row.shape[-1]]
        losses.append(masked_mean(per_row.mean(1), rows))  # over heads, then real query rows
    return torch.stack(losses).mean()


@contextlib.contextmanager
def mixer_inputs(model: nn.Module):
    """Record what each converted layer's mixer is called with: {layer: (x, padding_mask, position_embeddings)}."""
    captured: dict[int, tuple] = {}
    hooks = []
    for i, module in wave_attention_modules(model).items():
        def record(mod, args, kwargs, i=i):
            captured[i] = (args[0], kwargs.get("padding_mask"), kwargs.get("position_embeddings"))
        hooks.append(module.mixer.register_forward_pre_hook(record, with_kwargs=True))
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


def mixing_matrices(model: nn.Module, captured: dict, window: int = 0) -> tuple[list[Tensor], list[int], list[int]]:
    """(the converted layers' mixing matrices (B, G, W, W), their head counts, their layer indices), from the
    inputs :func:`mixer_inputs` recorded; W = ``window`` (> 0) or the whole sequence."""
    modules = wave_attention_modules(model)
    maps, heads, layers = [], [], []
    for i in sorted(captured):
        x, pad, pe = captured[i]
        if window:
            x, pad = x[:, :window], None if pad is None else pad[:, :window]
            pe = None if pe is None else tuple(p[:, :window] for p in pe)
        mixer = modules[i].mixer
        maps.append(mixer.mixing_matrix(x, pad, pe))
        heads.append(mixer.n_heads)
        layers.append(i)
    return maps, heads, layers
