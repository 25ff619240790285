"""Optimizer parameter groups shared by distillation and the lab."""

from __future__ import annotations

from torch import nn


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    """Tag a parameter that weight decay must not pull towards zero (filter taps, phases, decays)."""
    p._no_weight_decay = True
    return p


def param_groups(params, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings; none on norms, biases and tagged wave parameters (filter
    taps, phases, decays, which decay would pull towards a wrong prior)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if getattr(p, "_no_weight_decay", False) or p.dim() < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
