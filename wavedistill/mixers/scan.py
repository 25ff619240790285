"""Decayed linear attention: the parallel (chunked) and recurrent forms of one linear recurrence.

    S_t = a_t S_(t-1) + k_t v_t^T        (per head; S is (F, dv), a_t = exp(log_decay_t) in (0, 1])
    o_t = q_t^T S_t

so ``o_t = sum_(s <= t) (prod_(s < r <= t) a_r) (q_t . k_s) v_s``. Gated linear attention, RetNet and
Mamba-2's SSD are this recurrence with different q / k / decays (fla ``ops/simple_gla``, mamba
``ssd_minimal``). The chunked form splits T into chunks of ``chunk`` tokens: inside a chunk it is a
masked (C x C) matmul, across chunks the state S carries over, so training costs O(T C F) and
decoding O(F dv) per token. Decay products are formed as exp of differences of cumulative logs
inside a chunk only, so every exponent is <= 0 and nothing overflows.

:func:`decayed_linear_attention_naive` is the dense T x T reference the tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def decayed_linear_attention(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk: int = 64,
                             state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked form. q, k: (B, H, T, F); v: (B, H, T, dv); log_decay: (B, H, T), <= 0.

    Returns o (B, H, T, dv) and the state after the last token, S (B, H, F, dv), starting from
    ``state`` (default zeros). Forward and backward are written out (:class:`_ChunkedScan`): under
    autograd the loop over chunks kept every step's tensors and its backward was several times the
    forward's cost (docs/benchmarks.md).
    """
    if chunk < 1:
        raise ValueError(f"decayed_linear_attention: chunk must be >= 1, got {chunk}")
    if state is None:
        state = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    return _ChunkedScan.apply(*_in_float(q, k, v, log_decay, state), chunk)


def _in_float(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors in one dtype of at least float32: under a bf16 autocast the caller's matmuls hand over bf16
    features beside float32 values, and the scan computes in float32 whatever it is given (gradients flow
    back through the casts in each input's own dtype)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def chunk_for(width: int) -> int:
    """A chunk length for a scan whose per-token products are about ``width`` wide: the power of two nearest
    to it, within [16, 64]. Inside a chunk the work per token grows with the chunk length, across chunks with
    the state's size; measured on CPU (docs/benchmarks.md), 16 suits head_dim 8 and 64 rotary_gla's 128
    features (gated_delta_net: 32 at head_dim 64)."""
    nearest = 1 << max(0, round(math.log2(max(width, 1))))
    return min(64, max(16, nearest))


def _chunks(t: Tensor, n: int, C: int) -> Tensor:
    """(B, H, T, ...) -> (B, H, n, C, ...), zero-padded at the end."""
    extra = n * C - t.shape[2]
    pad = (0, extra) if t.dim() == 3 else (0, 0, 0, extra)
    return F.pad(t, pad).contiguous().view(*t.shape[:2], n, C, *t.shape[3:])


def _float_matmuls(fn):
    """Run a Function's forward / backward with autocast off: its inputs arrive in one dtype >= float32
    (:func:`_in_float`), and under a bf16 autocast the matmuls inside would otherwise round the scan's products
    (and only in forward)."""
    def wrapped(ctx, *args):
        with torch.autocast(_device_type(args), enabled=False):
            return fn(ctx, *args)
    return wrapped


def _device_type(args) -> str:
    return next(a.device.type for a in args if isinstance(a, Tensor))


class _ChunkedScan(torch.autograd.Function):
    """The chunked recurrence with a hand-written backward.

    Per chunk (g: cumulative log decay inside the chunk, D_ij = exp(g_i - g_j) for j <= i):
    ``O = (Q K^T * D) V + exp(g) (Q S_before)`` and ``S_after = exp(g_C) S_before + K^T (exp(g_C - g) V)``.
    The backward runs the same matmuls transposed, the state gradients in one reverse loop over chunks,
    and the decay gradient from the identity ``dL/dG_t = q_t . dq_t - k_t . dk_t`` (G the cumulative log
    decay from the start: G_t enters o only as exp(G_t) on the query side and exp(-G_t) on the key side),
    plus the final state's ``<dS_T, S_T>`` at the last token, summed back over t (fla's ``chunk_simple_gla``
    does the same). Decays scale the value-wide side of each product (dv columns), not the feature side.
    """

    @staticmethod
    @_float_matmuls
    def forward(ctx, q, k, v, log_decay, state, chunk):
        B, H, T, Fd = q.shape
        dv = v.shape[-1]
        C = min(chunk, T)
        n = -(-T // C)
        N = B * H * n
        # Padding the tail with k = v = 0 and decay 1 leaves the final state unchanged.
        q, k, v = (_chunks(t, n, C).view(N, C, -1) for t in (q, k, v))  # (N, C, F / dv), one row per chunk
        g = _chunks(log_decay, n, C).cumsum(-1).view(N, C, 1)  # cumulative log decay in the chunk
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        D = (g - g.transpose(-1, -2)).masked_fill_(~causal, float("-inf")).exp_()  # (N, C, C)
        A = torch.bmm(q, k.transpose(-1, -2)).mul_(D)
        o = torch.bmm(A, v)  # (N, C, dv) within each chunk
        last = g[:, -1:]  # (N, 1, 1)
        vw = v * (last - g).exp()  # values decayed to their chunk's end
        U = torch.bmm(k.transpose(-1, -2), vw).view(B, H, n, Fd, dv)
        a = last.exp().view(B, H, n, 1, 1)
        before = torch.empty(B, H, n, Fd, dv, dtype=q.dtype, device=q.device)  # the state each chunk starts from
        before[:, :, 0] = state
        for c in range(n - 1):  # S_(c+1) = a_c S_c + U_c, outside autograd: one op per chunk
            torch.addcmul(U[:, :, c], before[:, :, c], a[:, :, c], out=before[:, :, c + 1])
        final = torch.addcmul(U[:, :, -1], before[:, :, -1], a[:, :, -1])
        eg = g.exp()
        o.add_(torch.bmm(q, before.view(N, Fd, dv)).mul_(eg))  # what earlier chunks left in the state
        ctx.save_for_backward(q, k, v, vw, g, D, A, before, final)
        ctx.shape = (B, H, n, T)
        return o.view(B, H, n * C, dv)[:, :, :T], final

    @staticmethod
    @_float_matmuls
    def backward(ctx, d_o, d_final):
        q, k, v, vw, g, D, A, before, final = ctx.saved_tensors
        B, H, n, T = ctx.shape
        N, C, Fd = q.shape
        dv = v.shape[-1]
        d_o = _chunks(d_o, n, C).view(N, C, dv)
        eg, last = g.exp(), g[:, -1:]
        dP = torch.bmm(d_o, v.transpose(-1, -2)).mul_(D)  # (N, C, C)
        d_oe = d_o * eg
        dq = torch.bmm(dP, k).baddbmm_(d_oe, before.view(N, Fd, dv).transpose(-1, -2))
        d_local = torch.bmm(q.transpose(-1, -2), d_oe).view(B, H, n, Fd, dv)  # into each chunk's starting state
        a = last.exp().view(B, H, n, 1, 1)
        dU = torch.empty_like(d_local)  # gradient of the state after chunk c, walked backwards
        dU[:, :, -1] = d_final
        for c in range(n - 1, 0, -1):
            torch.addcmul(d_local[:, :, c], dU[:, :, c], a[:, :, c], out=dU[:, :, c - 1])
        d_state = torch.addcmul(d_local[:, :, 0], dU[:, :, 0], a[:, :, 0])
        dU = dU.view(N, Fd, dv)
        dk = torch.bmm(dP.transpose(-1, -2), q).baddbmm_(vw, dU.transpose(-1, -2))
        dv_ = torch.bmm(A.transpose(-1, -2), d_o).add_(torch.bmm(k, dU).mul_((last - g).exp()))
        dG = ((q * dq).sum(-1) - (k * dk).sum(-1)).view(B, H, n * C)
        dG[..., -1] += (d_final * final).sum((-1, -2))
        d_log = dG.flip(-1).cumsum(-1).flip(-1)[..., :T]
        return (*(t.view(B, H, n * C, -1)[:, :, :T] for t in (dq, dk, dv_)), d_log, d_state, None)


def chunk_state_recurrence(M: Tensor, X: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """States across chunks: ``S_(c+1) = M_c S_c + X_c`` from ``S_0 = state``.

    M: (B, H, n, dk, dk), X: (B, H, n, dk, dv), state: (B, H, dk, dv). Returns the state each chunk
    starts from, (B, H, n, dk, dv), and the one after the last chunk. A chunked form that computes
    everything else in batch over chunks (gated DeltaNet's) needs only this loop; its backward is
    written out (:class:`_StateRecurrence`) so that autograd does not record n steps.
    """
    return _StateRecurrence.apply(*_in_float(M, X, state))


class _StateRecurrence(torch.autograd.Function):
    """Backward: with G the gradient of S_(c+1), ``dX_c = G``, ``dM_c = G S_c^T`` and the gradient of S_c
    is ``dS_c (direct) + M_c^T G``, walked from the last chunk to the first."""

    @staticmethod
    @_float_matmuls
    def forward(ctx, M, X, state):
        B, H, n, dk, dv = X.shape
        Ms, Xs = M.flatten(0, 1).unbind(1), X.flatten(0, 1).unbind(1)  # n of (BH, dk, dk) / (BH, dk, dv)
        S = state.reshape(B * H, dk, dv)
        before = []
        for M_c, X_c in zip(Ms, Xs):
            before.append(S)
            S = torch.baddbmm(X_c, M_c, S)
        before = torch.stack(before, dim=1).view(B, H, n, dk, dv)
        ctx.save_for_backward(M, before)
        return before, S.view(B, H, dk, dv)

    @staticmethod
    @_float_matmuls
    def backward(ctx, d_before, d_final):
        M, before = ctx.saved_tensors
        B, H, n, dk, dv = before.shape
        G = d_final.reshape(B * H, dk, dv)  # autograd hands zeros for an unused output (materialize_grads)
        Ms, dBs = M.flatten(0, 1).unbind(1), d_before.flatten(0, 1).unbind(1)
        dX = [None] * n
        for c in range(n - 1, -1, -1):
            dX[c] = G
            G = torch.baddbmm(dBs[c], Ms[c].transpose(-1, -2), G)
        dX = torch.stack(dX, dim=1).view(B, H, n, dk, dv)
        return dX @ before.transpose(-1, -2), dX, G.view(B, H, dk, dv)


def decayed_linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """Dense reference: o_t = sum_(s <= t) exp(sum_(s < r <= t) log_decay_r) (q_t . k_s) v_s."""
    T = q.shape[2]
    g = log_decay.cumsum(-1)  # (B, H, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    weights = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # (B, H, T, T)
    return torch.einsum("bhts,bhtf,bhsf,bhsd->bhtd", weights, q, k, v)


def decayed_linear_attention_step(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor,
                                  state: Tensor) -> tuple[Tensor, Tensor]:
    """One token: q, k (B, H, F), v (B, H, dv), log_decay (B, H), state (B, H, F, dv) -> o (B, H, dv), state."""
    state = log_decay.exp()[..., None, None] * state + k[..., :, None] * v[..., None, :]
    return torch.einsum("bhf,bhfd->bhd", q, state), state
