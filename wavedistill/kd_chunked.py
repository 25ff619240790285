"""Logit distillation without (B, T, V) float32 buffers: the KD loss computed a chunk of positions at a time.

The dense loss (:func:`wavedistill.losses.kd_loss`) materialises several float32 copies of the
logits at once (both log-softmaxes, the teacher's probabilities, their product, the gradient): at
Qwen3's 151,936-token vocabulary that is ~11 GiB at 16 x 256 positions. Here the loss and its
gradient with respect to the student's logits are computed in one pass over chunks of ``chunk``
positions; only one chunk's float32 probabilities exist at a time, and the gradient is written into
one buffer of the logits' own dtype that backward hands on. The student's log-softmax is computed
once per chunk and serves both the divergence (at temperature 1) and the cross-entropy.

Divergences (per position, at temperature T, scaled by T^2 as in Hinton et al. 2015):
``forward_kl`` KL(teacher || student), ``reverse_kl`` KL(student || teacher) and ``jsd`` (the
Jensen-Shannon divergence, mean of both KLs to the mixture). Numerically equal to the dense
computation (tests compare loss and gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import WavedistillError

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
# float32 values per chunk buffer (32 MB): 55 positions at a 151,936-token vocabulary. About six such buffers
# exist at once inside a chunk; at 128 MB they added ~0.6 GB to the real-shape step (docs/benchmarks.md).
CHUNK_ELEMENTS = 1 << 23


def divergence(t_logp: Tensor, s_logp: Tensor, kind: str) -> Tensor:
    """Per-position divergence from log-probabilities (..., V) -> (...)."""
    if kind == "forward_kl":
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if kind == "reverse_kl":
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    if kind == "jsd":
        m_logp = torch.logaddexp(t_logp, s_logp) - math.log(2.0)
        return 0.5 * ((t_logp.exp() * (t_logp - m_logp)).sum(-1) + (s_logp.exp() * (s_logp - m_logp)).sum(-1))
    raise WavedistillError(f"unknown divergence {kind!r}; known: {', '.join(DIVERGENCES)}")


class _ChunkedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, targets, kl_w, ce_w, temperature, chunk, kind, smoothing):
        # student, teacher: (N, V) logits; targets: (N,) next tokens, -100 = no CE; kl_w: (N,) weight of
        # each position's divergence (mask * T^2 / n), ce_w: (N,) weight of its CE; temperature: (N,).
        grad = torch.zeros_like(student)
        total = student.new_zeros((), dtype=torch.float32)
        divs = student.new_zeros(student.shape[0], dtype=torch.float32)  # per position, for the logs
        ces = torch.zeros_like(divs)
        for i in range(0, student.shape[0], chunk):
            sl = slice(i, i + chunk)
            with torch.enable_grad():
                s = student[sl].float().requires_grad_(True)  # (c, V): the only float32 copies of this chunk
                tau = temperature[sl, None]
                s1 = F.log_softmax(s, dim=-1)  # once, for CE and for the divergence at temperature 1
                s_logp = s1 if bool((tau == 1).all()) else F.log_softmax(s / tau, dim=-1)
                with torch.no_grad():
                    t_logp = F.log_softmax(teacher[sl].float() / tau, dim=-1)
                div = divergence(t_logp, s_logp, kind)  # (c,)
                ce = -s1.gather(-1, targets[sl].clamp_min(0)[:, None])[:, 0] * (targets[sl] >= 0)
                # Label smoothing: the target is (1 - e) one-hot + e uniform; the logged CE stays the plain one.
                ce_term = ce if not smoothing else (1 - smoothing) * ce - smoothing * s1.mean(-1) * (targets[sl] >= 0)
                loss = (kl_w[sl] * div).sum() + (ce_w[sl] * ce_term).sum()
                (g,) = torch.autograd.grad(loss, s)
            grad[sl] = g.to(grad.dtype)
            total = total + loss.detach()
            divs[sl], ces[sl] = div.detach(), ce.detach()
        ctx.save_for_backward(grad)
        ctx.backward_done = False
        ctx.mark_non_differentiable(divs, ces)
        return total, divs, ces

    @staticmethod
    def backward(ctx, grad_total, _kl, _ce):
        if ctx.backward_done:
            raise WavedistillError("the chunked KD loss was backpropagated twice (retain_graph=True); its gradient "
                                   "buffer is scaled in place by the first backward: compute the loss again instead")
        ctx.backward_done = True
        (grad,) = ctx.saved_tensors
        # In place: `grad * grad_total` would allocate a second (N, V) buffer, the size this function avoids.
        return (grad.mul_(grad_total.to(grad.dtype)),) + (None,) * 8


def kd_loss_chunked(student_logits: Tensor, teacher_logits: Tensor, input_ids: Tensor, *,
                    temperature: float | Tensor = 1.0, kl_weight: float = 0.9, ce_weight: float = 0.1,
                    mask: Tensor | None = None, divergence_kind: str = "forward_kl",
                    chunk: int | None = None, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """:func:`wavedistill.losses.kd_loss` (same arguments, same returned ``loss``, ``kl``, ``ce``), chunked.

    ``kl`` is the unweighted mean divergence of ``divergence_kind`` at the temperature used. ``chunk``:
    positions per chunk; None sizes it to ``CHUNK_ELEMENTS`` float32 values (32 MB) per buffer.
    """
    if divergence_kind not in DIVERGENCES:
        raise WavedistillError(f"unknown divergence {divergence_kind!r}; known: {', '.join(DIVERGENCES)}")
    B, T, V = student_logits.shape
    chunk = max(1, CHUNK_ELEMENTS // V) if chunk is None else chunk
    if chunk < 1:
        raise WavedistillError(f"the KD loss chunk must be >= 1 position, got {chunk}")
    if not 0.0 <= label_smoothing < 1.0:
        raise WavedistillError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
    tau = (temperature if isinstance(temperature, Tensor) else torch.full((B, T), float(temperature),
                                                                           device=input_ids.device)).float()
    maskf = mask.float()
    kl_w = kl_weight * maskf * tau**2 / maskf.sum().clamp_min(1)  # (B, T)
    ce_mask = torch.zeros_like(maskf)
    ce_mask[:, :-1] = (mask[:, :-1] & mask[:, 1:]).float()  # CE needs position t and the next token real
    ce_w = ce_weight * ce_mask / ce_mask.sum().clamp_min(1)
    targets = torch.full_like(input_ids, -100)
    targets[:, :-1] = input_ids[:, 1:]
    loss, div, ce = _ChunkedKD.apply(student_logits.reshape(B * T, V), teacher_logits.reshape(B * T, V).detach(),
                                     targets.reshape(-1), kl_w.reshape(-1), ce_w.reshape(-1), tau.reshape(-1), chunk,
                                     divergence_kind, float(label_smoothing))
    kl = (div.view(B, T) * maskf).sum() / maskf.sum().clamp_min(1)
    ce = (ce.view(B, T) * ce_mask).sum() / ce_mask.sum().clamp_min(1)
    return {"loss": loss, "kl": kl, "ce": ce}
