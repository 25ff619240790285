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

import torch
import torch.nn.functional as F
from torch import Tensor


def decayed_linear_attention(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk: int = 64,
                             state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked form. q, k: (B, H, T, F); v: (B, H, T, dv); log_decay: (B, H, T), <= 0.

    Returns o (B, H, T, dv) and the state after the last token, S (B, H, F, dv), starting from
    ``state`` (default zeros).
    """
    B, H, T, Fd = q.shape
    dv = v.shape[-1]
    C = min(chunk, T)
    n = -(-T // C)
    extra = n * C - T
    # Padding the tail with k = v = 0 and decay 1 leaves the final state unchanged.
    q, k, v = (F.pad(t, (0, 0, 0, extra)).view(B, H, n, C, -1) for t in (q, k, v))
    g = F.pad(log_decay, (0, extra)).view(B, H, n, C).cumsum(-1)  # (B, H, n, C) cumulative log decay in the chunk
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # (B, H, n, C, C)
    o = ((q @ k.transpose(-1, -2)) * decay) @ v  # within each chunk
    last = g[..., -1:]  # (B, H, n, 1)
    chunk_update = (k * (last - g).exp()[..., None]).transpose(-1, -2) @ v  # (B, H, n, F, dv)
    chunk_decay = last.exp()[..., None]  # (B, H, n, 1, 1)
    S = q.new_zeros(B, H, Fd, dv) if state is None else state.to(q.dtype)
    before = []
    # unbind, not chunk_update[:, :, c]: each index's backward would allocate and fill a full-size zero
    # gradient, n of them, O(n^2) work that made the backward super-linear in T (docs/benchmarks.md)
    for a_c, u_c in zip(chunk_decay.unbind(2), chunk_update.unbind(2)):
        before.append(S)
        S = a_c * S + u_c
    o = o + (q * g.exp()[..., None]) @ torch.stack(before, dim=2)  # what earlier chunks left in the state
    return o.reshape(B, H, n * C, dv)[:, :, :T], S


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
