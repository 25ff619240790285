"""The KD loss on an offline teacher cache's targets (:mod:`wavedistill.training.teacher_cache`).

The divergence between teacher and student distributions *coarsened* to k + 1 outcomes, the teacher's k cached
tokens and one "rest" bucket. For forward KL, per position::

    sum_i p_i (log p_i - log q_i) + p_rest (log p_rest - log q_rest),   q_rest = 1 - sum_i q_i

with q the student's softmax over the same k ids (``log q_rest`` is the log-sum-exp of the student's
other log-probabilities, exact even when the top k hold nearly all of its mass). It is at most the
full KL (coarsening never increases a divergence) and equals it when k = V. Reverse KL and JSD are
taken over the same k + 1 outcomes (:func:`.engine.divergence`). Temperature 1 only:
softening needs the teacher's whole distribution. CE on the next token and masks as in
:func:`wavedistill.kd.losses.kd_loss`; the loss runs a chunk of positions at a time through :mod:`.engine`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .engine import check_settings, chunked_logit_loss, divergence, position_weights

# Finite stand-ins for log 0: 0 * (-inf) would be NaN in the divergence and its gradient.
_STUDENT_FLOOR = -1e30  # log q_rest when the k ids cover the whole vocabulary
_TEACHER_FLOOR = -1e4  # exp() of it is 0 in float32


@torch.no_grad()
def teacher_targets(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(..., V) logits -> top-k ids (..., k), their log-probabilities (..., k), log of the rest's mass (...)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top_logp, top_ids = logp.topk(k, dim=-1)
    # The rest's mass summed directly (not 1 - top-k mass, which float32 rounds to 0 for a peaked teacher).
    rest = logp.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
    return top_ids, top_logp, rest


def _teacher_coarse(topk_logp: Tensor, rest_logp: Tensor) -> Tensor:
    """(..., k), (...) cached log-probabilities -> (..., k + 1) float32, renormalised (float16 storage
    leaves their sum a little off 1), with a finite floor for the empty rest bucket of k = V."""
    t = torch.cat([topk_logp.float(), rest_logp.float()[..., None]], dim=-1)
    return (t - t.logsumexp(-1, keepdim=True)).clamp_min(_TEACHER_FLOOR)


def student_coarse(s_logp: Tensor, topk_ids: Tensor) -> Tensor:
    """(..., V) student log-probabilities, (..., k) ids -> (..., k + 1): the ids' log-probabilities and the
    log of the rest's mass (log-sum-exp over the other ids; a finite floor if there are none)."""
    top = s_logp.gather(-1, topk_ids)
    chosen = torch.zeros_like(s_logp, dtype=torch.bool).scatter_(-1, topk_ids, True)
    rest = s_logp.masked_fill(chosen, _STUDENT_FLOOR).logsumexp(-1)
    return torch.cat([top, rest[..., None]], dim=-1)


def cached_kd_loss(student_logits: Tensor, input_ids: Tensor, topk_ids: Tensor, topk_logp: Tensor,
                   rest_logp: Tensor, *, kl_weight: float = 0.9, ce_weight: float = 0.1, mask: Tensor | None = None,
                   divergence_kind: str = "forward_kl", chunk: int | None = None) -> dict[str, Tensor]:
    """``kl_weight * mean(D_coarse(teacher, student)) + ce_weight * CE`` from cached targets, ``chunk`` positions
    at a time (None: 32 MB of float32 per buffer). Shapes: logits (B, T, V), ids (B, T), topk (B, T, k),
    rest (B, T). Returns ``loss`` and the unweighted means ``kl`` (the coarse divergence) and ``ce``."""
    B, T, V = student_logits.shape
    chunk = check_settings(divergence_kind, chunk, V)
    k = topk_ids.shape[-1]
    ids = topk_ids.reshape(B * T, k).long()
    t_coarse = _teacher_coarse(topk_logp, rest_logp).reshape(B * T, k + 1)

    def chunk_divergence(sl: slice, s: Tensor, s_logp: Tensor) -> Tensor:
        return divergence(t_coarse[sl], student_coarse(s_logp, ids[sl]), divergence_kind)

    return chunked_logit_loss(student_logits, input_ids, chunk_divergence, kl_weight=kl_weight, ce_weight=ce_weight,
                              mask=mask, chunk=chunk)


def cached_kd_loss_dense(student_logits: Tensor, input_ids: Tensor, topk_ids: Tensor, topk_logp: Tensor,
                         rest_logp: Tensor, *, kl_weight: float = 0.9, ce_weight: float = 0.1,
                         mask: Tensor | None = None, divergence_kind: str = "forward_kl") -> dict[str, Tensor]:
    """:func:`cached_kd_loss` on the whole (B, T, V) at once through autograd: the reference (``loss_chunk: 0``)."""
    s_logp = F.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    div = divergence(_teacher_coarse(topk_logp, rest_logp), student_coarse(s_logp, topk_ids.long()),
                     divergence_kind)  # (B, T)
    ce = -s_logp[:, :-1].gather(-1, input_ids[:, 1:, None])[..., 0]  # (B, T - 1)
    maskf, ce_mask, _, kl_w, ce_w = position_weights(input_ids, mask, kl_weight, ce_weight)
    loss = (kl_w * div).sum() + (ce_w[:, :-1] * ce).sum()
    kl = (div * maskf).sum() / maskf.sum().clamp_min(1)
    ce = (ce * ce_mask[:, :-1]).sum() / ce_mask.sum().clamp_min(1)
    return {"loss": loss, "kl": kl.detach(), "ce": ce.detach()}
