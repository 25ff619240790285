"""Per-layer attention-output transfer (LoLCATs "attention transfer", MOHAWK stage 2).

One teacher forward records, for every chosen layer, what its self-attention received (the
normed hidden states, rotary tables and mask) and what it returned. Each student mixer is then
trained to reproduce that output from the *teacher's* inputs, all layers at once, with no LM
head and no vocabulary softmax: a cheap first stage before end-to-end logit distillation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import WavedistillError
from .surgery import decoder_layers, padding_mask_from_attention_mask, wave_attention_modules

LOSSES = ("mse", "cosine")


@dataclass
class AttentionRecord:
    hidden_states: Tensor  # (B, T, D) input of self_attn
    position_embeddings: tuple[Tensor, Tensor] | None
    attention_mask: Tensor | None
    output: Tensor  # (B, T, D) attention output


@contextlib.contextmanager
def record_attention(model: nn.Module, layers: list[int]):
    """Yield a dict layer -> :class:`AttentionRecord`, filled by the next forward of ``model``."""
    records: dict[int, AttentionRecord] = {}
    blocks = decoder_layers(model)

    def hook(i):
        def fn(module, args, kwargs, output):
            records[i] = AttentionRecord(kwargs["hidden_states"].detach(), kwargs.get("position_embeddings"),
                                         kwargs.get("attention_mask"), output[0].detach())
        return fn

    handles = [blocks[i].self_attn.register_forward_hook(hook(i), with_kwargs=True) for i in layers]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def transfer_loss(pred: Tensor, target: Tensor, kind: str = "mse", mask: Tensor | None = None) -> Tensor:
    """Mean over real positions of the squared error, or of 1 - cosine similarity, over the width D."""
    if kind not in LOSSES:
        raise WavedistillError(f"unknown transfer loss {kind!r}; known: {', '.join(LOSSES)}")
    pred, target = pred.float(), target.float()
    per_pos = ((pred - target) ** 2).mean(-1) if kind == "mse" else 1 - F.cosine_similarity(pred, target, dim=-1)
    if mask is None:
        return per_pos.mean()
    return (per_pos * mask).sum() / mask.sum().clamp_min(1)


def transfer_step(teacher: nn.Module, student: nn.Module, input_ids: Tensor, kind: str = "mse") -> dict[str, Tensor]:
    """Loss of every converted student layer against the teacher's attention output on the teacher's inputs.

    Returns {"loss": sum over layers (differentiable), "layer_{i}": detached per-layer losses}.
    """
    mixers = {i: m.mixer for i, m in wave_attention_modules(student).items()}
    if not mixers:
        raise WavedistillError("the student has no converted layers to transfer into")
    with torch.no_grad(), record_attention(teacher, sorted(mixers)) as records:
        teacher(input_ids, use_cache=False)
    out = {}
    total = 0.0
    for i, mixer in mixers.items():
        r = records[i]
        pad = padding_mask_from_attention_mask(r.attention_mask, r.hidden_states.shape[1])
        pred = mixer(r.hidden_states, padding_mask=pad, position_embeddings=r.position_embeddings)
        loss = transfer_loss(pred, r.output, kind, None if pad is None else pad.float())
        out[f"layer_{i}"] = loss.detach()
        total = total + loss
    out["loss"] = total
    return out
