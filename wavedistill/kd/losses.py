"""Distillation losses, averaged over real tokens only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def kl_teacher_student(teacher_logits: Tensor, student_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Per-position KL(p_teacher || p_student) at ``temperature``, in nats; (B, T, V) -> (B, T).

    ``temperature`` is a number or a (B, T) tensor of per-position temperatures.
    """
    if isinstance(temperature, Tensor):
        temperature = temperature[..., None]
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of (B, T) ``values`` over real positions (mask (B, T), True / 1 = real); all positions without a mask."""
    return values.mean() if mask is None else (values * mask).sum() / mask.sum().clamp_min(1)


def next_token_ce(logits: Tensor, input_ids: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per-position cross-entropy of predicting token t+1 from position t; (B, T, V) -> (B, T-1).

    ``label_smoothing`` e: against the target (1 - e) one-hot + e uniform (Szegedy et al. 2016)."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none",
                           label_smoothing=label_smoothing).view(input_ids.shape[0], -1)


@torch.no_grad()
def entropy_temperature(teacher_logits: Tensor, t_max: float) -> Tensor:
    """Per-position temperature from the teacher's entropy H: ``1 + (t_max - 1) * (1 - H / log V)``; (B, T).

    A confident teacher position (H near 0) is softened up to ``t_max`` so that the student sees its
    ranking of the other tokens; a position where the teacher is already unsure (H near log V) keeps 1.
    """
    logp = F.log_softmax(teacher_logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return 1.0 + (t_max - 1.0) * (1.0 - entropy / math.log(teacher_logits.shape[-1])).clamp(0.0, 1.0)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, input_ids: Tensor, *, temperature: float | Tensor = 1.0,
            kl_weight: float = 0.9, ce_weight: float = 0.1, mask: Tensor | None = None,
            label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """``kl_weight * mean(T^2 * KL_T(teacher || student)) + ce_weight * CE``, each a mean over real tokens.

    The T^2 factor keeps the KL gradient scale independent of the temperature (Hinton et al., 2015);
    with a (B, T) temperature it applies per position. CE is always at temperature 1.
    mask: (B, T) bool, True = real token; CE also needs the *next* token to be real.
    Returns the weighted ``loss`` and the unweighted means ``kl`` (at the temperature used) and ``ce``
    (plain CE; with ``label_smoothing`` the loss uses the smoothed one).
    """
    kl = kl_teacher_student(teacher_logits, student_logits, temperature)  # (B, T)
    scale = temperature**2 if isinstance(temperature, Tensor) else torch.tensor(float(temperature) ** 2)
    ce = next_token_ce(student_logits, input_ids)  # (B, T-1)
    ce_term = ce if not label_smoothing else next_token_ce(student_logits, input_ids, label_smoothing)
    if mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    ce_mask = mask[:, :-1] & mask[:, 1:]
    n = mask.sum().clamp_min(1)
    scaled_kl = (scale * kl * mask).sum() / n
    kl = (kl * mask).sum() / n
    n_ce = ce_mask.sum().clamp_min(1)
    ce, ce_term = (ce * ce_mask).sum() / n_ce, (ce_term * ce_mask).sum() / n_ce
    loss = kl_weight * scaled_kl + ce_weight * ce_term
    return {"loss": loss, "kl": kl.detach(), "ce": ce.detach()}
