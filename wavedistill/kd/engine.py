"""The chunked engine every logit-distillation loss runs through: a KD loss a chunk of positions at a time.

The dense loss (:func:`wavedistill.kd.losses.kd_loss`) materialises several float32 copies of the
logits at once (both log-softmaxes, the teacher's probabilities, their product, the gradient): at
Qwen3's 151,936-token vocabulary that is ~11 GiB at 16 x 256 positions. Here the loss and its
gradient with respect to the student's logits are computed in one pass over chunks of ``chunk``
positions; only one chunk's float32 probabilities exist at a time, and the gradient is written into
one buffer of the logits' own dtype that backward hands on. The student's log-softmax is computed
once per chunk and serves both the divergence and the cross-entropy.

What the student is compared with is the caller's: a function of (chunk slice, the chunk's float32
student logits, their log-softmax) that returns each position's divergence. The live teacher's
logits (:mod:`.chunked`) and a teacher cache's top-k targets (:mod:`.cached`) are two such functions.

Divergences (per position): ``forward_kl`` KL(teacher || student), ``reverse_kl`` KL(student || teacher)
and ``jsd`` (the Jensen-Shannon divergence, mean of both KLs to the mixture).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import WavedistillError

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
# float32 values per chunk buffer (32 MB): 55 positions at a 151,936-token vocabulary. About six such buffers
# exist at once inside a chunk; at 128 MB they added ~0.6 GB to the real-shape step (docs/benchmarks.md).
CHUNK_ELEMENTS = 1 << 23

# (chunk slice, (c, V) float32 student logits, their log-softmax) -> (c,) divergence, differentiable in the logits
ChunkDivergence = Callable[[slice, Tensor, Tensor], Tensor]


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


def check_settings(kind: str, chunk: int | None, vocab: int) -> int:
    """The chunk length in positions (None: ``CHUNK_ELEMENTS`` float32 values per buffer); bad settings raise."""
    if kind not in DIVERGENCES:
        raise WavedistillError(f"unknown divergence {kind!r}; known: {', '.join(DIVERGENCES)}")
    chunk = max(1, CHUNK_ELEMENTS // vocab) if chunk is None else chunk
    if chunk < 1:
        raise WavedistillError(f"the KD loss chunk must be >= 1 position, got {chunk}")
    return chunk


def position_weights(input_ids: Tensor, mask: Tensor | None, kl_weight: float, ce_weight: float,
                     kl_scale: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """All (B, T): the real-position mask, the CE mask (position t and its next token real), the CE targets
    (-100 = none), and each position's weight of the divergence (``kl_weight * kl_scale / n``) and of the CE."""
    if mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    maskf = mask.float()
    ce_mask = torch.zeros_like(maskf)
    ce_mask[:, :-1] = (mask[:, :-1] & mask[:, 1:]).float()
    targets = torch.full_like(input_ids, -100)
    targets[:, :-1] = input_ids[:, 1:]
    kl_w = kl_weight * maskf * (1.0 if kl_scale is None else kl_scale) / maskf.sum().clamp_min(1)
    ce_w = ce_weight * ce_mask / ce_mask.sum().clamp_min(1)
    return maskf, ce_mask, targets, kl_w, ce_w


class _ChunkedLogitLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, targets, kl_w, ce_w, chunk, chunk_divergence, smoothing):
        # student: (N, V) logits; targets: (N,) next tokens, -100 = no CE; kl_w, ce_w: (N,) per-position weights.
        grad = torch.zeros_like(student)
        total = student.new_zeros((), dtype=torch.float32)
        divs = student.new_zeros(student.shape[0], dtype=torch.float32)  # per position, for the logs
        ces = torch.zeros_like(divs)
        for i in range(0, student.shape[0], chunk):
            sl = slice(i, i + chunk)
            with torch.enable_grad():
                s = student[sl].float().requires_grad_(True)  # (c, V): the only float32 copies of this chunk
                s_logp = F.log_softmax(s, dim=-1)  # once, for the CE and the divergence
                div = chunk_divergence(sl, s, s_logp)  # (c,)
                real = targets[sl] >= 0
                ce = -s_logp.gather(-1, targets[sl].clamp_min(0)[:, None])[:, 0] * real
                # Label smoothing: the target is (1 - e) one-hot + e uniform; the logged CE stays the plain one.
                ce_term = ce if not smoothing else (1 - smoothing) * ce - smoothing * s_logp.mean(-1) * real
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
    def backward(ctx, grad_total, _div, _ce):
        if ctx.backward_done:
            raise WavedistillError("the chunked KD loss was backpropagated twice (retain_graph=True); its gradient "
                                   "buffer is scaled in place by the first backward: compute the loss again instead")
        ctx.backward_done = True
        (grad,) = ctx.saved_tensors
        # In place: `grad * grad_total` would allocate a second (N, V) buffer, the size this function avoids.
        return (grad.mul_(grad_total.to(grad.dtype)),) + (None,) * 6


def chunked_logit_loss(student_logits: Tensor, input_ids: Tensor, chunk_divergence: ChunkDivergence, *,
                       kl_weight: float, ce_weight: float, mask: Tensor | None, chunk: int,
                       kl_scale: Tensor | None = None, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """``sum kl_w * divergence + sum ce_w * CE`` over (B, T, V) logits, ``chunk`` positions at a time.

    ``chunk_divergence`` gets slices of the flattened (B * T) positions. Returns ``loss`` and the unweighted
    means over real positions ``kl`` (the divergence) and ``ce``."""
    B, T, V = student_logits.shape
    maskf, ce_mask, targets, kl_w, ce_w = position_weights(input_ids, mask, kl_weight, ce_weight, kl_scale)
    loss, div, ce = _ChunkedLogitLoss.apply(student_logits.reshape(B * T, V), targets.reshape(-1), kl_w.reshape(-1),
                                            ce_w.reshape(-1), chunk, chunk_divergence, float(label_smoothing))
    kl = (div.view(B, T) * maskf).sum() / maskf.sum().clamp_min(1)
    ce = (ce.view(B, T) * ce_mask).sum() / ce_mask.sum().clamp_min(1)
    return {"loss": loss, "kl": kl, "ce": ce}
