"""Logit distillation losses, averaged over real tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kl_teacher_student(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-position KL(p_teacher || p_student) at ``temperature``, in nats; (B, T, V) -> (B, T)."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def next_token_ce(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Per-position cross-entropy of predicting token t+1 from position t; (B, T, V) -> (B, T-1)."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none").view(
        input_ids.shape[0], -1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, input_ids: Tensor, *, temperature: float = 1.0,
            alpha: float = 0.9, mask: Tensor | None = None) -> dict[str, Tensor]:
    """``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE``, each a mean over real tokens.

    The T^2 factor keeps the KL gradient scale independent of the temperature (Hinton et al., 2015).
    mask: (B, T) bool, True = real token; CE also needs the *next* token to be real.
    """
    kl = kl_teacher_student(teacher_logits, student_logits, temperature)  # (B, T)
    ce = next_token_ce(student_logits, input_ids)  # (B, T-1)
    if mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    ce_mask = mask[:, :-1] & mask[:, 1:]
    kl = (kl * mask).sum() / mask.sum().clamp_min(1)
    ce = (ce * ce_mask).sum() / ce_mask.sum().clamp_min(1)
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return {"loss": loss, "kl": kl.detach(), "ce": ce.detach()}
