"""The KD loss against the live teacher's logits, chunked (:mod:`.engine`): numerically equal to the dense
:func:`wavedistill.kd.losses.kd_loss` (tests compare loss and gradient), without its (B, T, V) float32 buffers.

At temperature T the divergence compares both distributions softened by T and is scaled by T^2 (Hinton et
al. 2015); the CE is always at temperature 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import WavedistillError
from .engine import check_settings, chunked_logit_loss, divergence


def kd_loss_chunked(student_logits: Tensor, teacher_logits: Tensor, input_ids: Tensor, *,
                    temperature: float | Tensor = 1.0, kl_weight: float = 0.9, ce_weight: float = 0.1,
                    mask: Tensor | None = None, divergence_kind: str = "forward_kl",
                    chunk: int | None = None, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """:func:`wavedistill.kd.losses.kd_loss` (same arguments, same returned ``loss``, ``kl``, ``ce``), chunked.

    ``kl`` is the unweighted mean divergence of ``divergence_kind`` at the temperature used; ``temperature`` is
    a number or a (B, T) tensor. ``chunk``: positions per chunk; None sizes it to 32 MB of float32 per buffer.
    """
    B, T, V = student_logits.shape
    chunk = check_settings(divergence_kind, chunk, V)
    if not 0.0 <= label_smoothing < 1.0:
        raise WavedistillError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    tau = (temperature if isinstance(temperature, Tensor) else torch.full((B, T), float(temperature),
                                                                           device=input_ids.device)).float()
    teacher = teacher_logits.detach().reshape(B * T, V)
    tau_flat = tau.reshape(-1, 1)

    def chunk_divergence(sl: slice, s: Tensor, s_logp: Tensor) -> Tensor:
        t = tau_flat[sl]  # (c, 1)
        at_one = bool((t == 1).all())
        with torch.no_grad():
            t_logp = F.log_softmax(teacher[sl].float() / t, dim=-1)
        return divergence(t_logp, s_logp if at_one else F.log_softmax(s / t, dim=-1), divergence_kind)

    return chunked_logit_loss(student_logits, input_ids, chunk_divergence, kl_weight=kl_weight, ce_weight=ce_weight,
                              mask=mask, chunk=chunk, kl_scale=tau**2, label_smoothing=label_smoothing)
