"""Gated DeltaNet: an online least-squares key -> value memory with a forgetting gate, over the teacher's q/k/v.

Per head a matrix memory S (head_dim_k x head_dim_v; ``S^T k`` reads the value stored under key k)
is updated by one gradient step on ``||S^T k_t - v_t||^2`` with step size beta_t (the delta rule:
write only what the memory does not already predict), after a data-dependent forgetting gate a_t:

    S_t = a_t (I - beta_t k_t k_t^T) S_(t-1) + beta_t k_t v_t^T,     o_t = g_h S_t^T q_t,
    beta_t = sigmoid(W_b x_t + b_b),     log a_t = logsigmoid(W_a x_t + b_a)

(Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks"). q and k are the teacher's, rotated by its
RoPE (teacher init of q/k/v/o and q/k norms; KV heads repeated for GQA), then L2-normalised over
head_dim: with ||k|| <= 1 and beta in (0, 1), ``I - beta k k^T`` is a contraction, so S stays bounded.
With a unit query, ``S^T q`` reads stored values at their own scale (as attention's weighted mean
of values does), so the teacher's 1/sqrt(d) softmax temperature has no role; a learned per-head gain
g_h (init 1) sets the output scale before the teacher's o_proj. (Gated DeltaNet's per-head RMS norm
was tried: at weight 1 it made stories260K's head outputs ~4x the teacher's and amplified bf16
rounding in heads whose read-out is small.) W_b = W_a = 0 at init: beta = 1/2 and time constants
log-spaced over ``[min_tau, max_tau]`` tokens across heads, as in rotary_gla.

Training runs the chunked WY / UT form of DeltaNet (:func:`gated_delta_chunked`); decoding the
recurrence, with O(head_dim^2) state per head and per token. Pads get beta = 0 and a = 1: no trace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State
from .qkv import QKVMixer, add_decay_gate, decay_logits
from .registry import register_mixer
from .scan import chunk_for, chunk_state_recurrence

EPS = 1e-6  # inside the L2 norm; keeps a pad's all-zero q or k finite (and differentiable)


def l2_normalize(u: Tensor) -> Tensor:
    return u * torch.rsqrt(u.pow(2).sum(-1, keepdim=True) + EPS)


def gated_delta_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_a: Tensor, chunk: int = 64,
                        state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked form. q, k: (B, H, T, dk); v: (B, H, T, dv); beta, log_a: (B, H, T) -> o (B, H, T, dv), final S.

    S (B, H, dk, dv) starts from ``state`` (default zeros).

    Inside a chunk starting from S0, with g_i the cumulative log decay since the chunk start, the
    written values u_i = beta_i (v_i - a_i S_(i-1)^T k_i) (so S_i = a_i S_(i-1) + k_i u_i^T) solve
    the unit lower-triangular system ``(I + A) U = beta V - beta exp(g) K S0`` with
    A_ij = beta_i exp(g_i - g_j) k_i . k_j for j < i (the UT transform). Then
    ``O = exp(g) Q S0 + (Q K^T * decay) U`` and ``S_C = exp(g_C) S0 + (exp(g_C - g) K)^T U``.
    """
    B, H, T, dk = q.shape
    dv = v.shape[-1]
    C = min(chunk, T)
    n = -(-T // C)
    extra = n * C - T
    # Tail padding with beta = 0 and decay 1 writes nothing and leaves the final state unchanged.
    q, k, v = (F.pad(t, (0, 0, 0, extra)).view(B, H, n, C, -1) for t in (q, k, v))  # (B, H, n, C, d)
    beta = F.pad(beta, (0, extra)).view(B, H, n, C)
    g = F.pad(log_a, (0, extra)).view(B, H, n, C).cumsum(-1)  # cumulative log decay in the chunk
    eye = torch.eye(C, dtype=torch.bool, device=q.device)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # Masked before exp: above the diagonal g_i - g_j > 0 could overflow.
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # (B, H, n, C, C)
    A = (beta[..., None] * (k @ k.transpose(-1, -2)) * decay).masked_fill(causal.logical_not() | eye, 0.0)
    rhs = torch.cat([beta[..., None] * v, (beta * g.exp())[..., None] * k], dim=-1)  # (B, H, n, C, dv + dk)
    # Unit lower-triangular: the solver never reads A's (zero) diagonal and assumes ones there.
    u0, w = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True).split([dv, dk], dim=-1)
    qk = (q @ k.transpose(-1, -2)) * decay  # (B, H, n, C, C), diagonal included
    qg = q * g.exp()[..., None]  # reads what earlier chunks left in S0, decayed to each position
    last = g[..., -1:]  # (B, H, n, 1)
    kd = k * (last - g).exp()[..., None]  # keys decayed to the chunk end
    # Across chunks S_(c+1) = a_c S_c + Kd_c^T (U0_c - W_c S_c) = M_c S_c + X_c: only this recurrence is
    # sequential; everything else runs over all chunks at once.
    identity = torch.eye(dk, dtype=q.dtype, device=q.device)
    M = last.exp()[..., None] * identity - kd.transpose(-1, -2) @ w  # (B, H, n, dk, dk)
    S0 = q.new_zeros(B, H, dk, dv) if state is None else state.to(q.dtype)
    before, S = chunk_state_recurrence(M, kd.transpose(-1, -2) @ u0, S0)  # (B, H, n, dk, dv)
    u = u0 - w @ before  # (B, H, n, C, dv) values written in each chunk
    o = qg @ before + qk @ u
    return o.reshape(B, H, n * C, dv)[:, :, :T], S


def gated_delta_step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_a: Tensor,
                     state: Tensor) -> tuple[Tensor, Tensor]:
    """One token: q, k (B, H, dk), v (B, H, dv), beta, log_a (B, H), state (B, H, dk, dv) -> o (B, H, dv), state."""
    S = log_a.exp()[..., None, None] * state
    u = beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", S, k))  # what the memory mispredicts for k
    S = S + k[..., :, None] * u[..., None, :]
    return torch.einsum("bhkv,bhk->bhv", S, q), S


@register_mixer("gated_delta_net")
class GatedDeltaNet(QKVMixer):
    """Args:
        d_model: model width D.
        chunk: chunk length of the parallel form (default: by width, :func:`.scan.chunk_for` of head_dim / 2:
            32 at head_dim 64, 16 at head_dim 8).
        min_tau, max_tau: initial forgetting time constants in tokens, log-spaced across heads (default 8, 512).
        qk_norm: RMS-normalise q and k per head (Qwen3 / Gemma3 style), before RoPE and the L2 norm.
        rope: rotate q and k (default True); rope_theta: rotary base used when no teacher tables are passed.
        n_heads, n_kv_heads, head_dim, bias: attention geometry.
    """

    state_form = "per head a (head_dim x head_dim) key -> value memory; O(head_dim^2) per token"

    def __init__(self, d_model: int, *, chunk: int | None = None, min_tau: float = 8.0, max_tau: float = 512.0,
                 **geometry) -> None:
        super().__init__(d_model, **geometry)
        self.causal_only("a causal recurrence")
        if chunk is not None and chunk < 1:
            raise MixerValueError(f"gated_delta_net chunk must be >= 1, got {chunk}")
        self.chunk = chunk or chunk_for(self.head_dim // 2)
        H = self.n_heads
        self.beta_proj = nn.Linear(d_model, H, bias=True)  # W_b = 0, b_b = 0: beta = 1/2
        nn.init.zeros_(self.beta_proj.weight)
        nn.init.zeros_(self.beta_proj.bias)
        add_decay_gate(self, min_tau, max_tau)
        self.out_gain = no_weight_decay(nn.Parameter(torch.ones(H)))  # (H,) g_h

    def _inputs(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, padding_mask):
        """Unit q, k, values, beta and log a in >= float32; pads get k = v = 0, beta = 0, log a = 0."""
        ct = torch.promote_types(x.dtype, torch.float32)
        q, k, v = l2_normalize(q.to(ct)), l2_normalize(k.to(ct)), v.to(ct)  # (B, H, T, hd)
        # .to(ct), not .float(): a float64 run must not round its gates to float32.
        beta = torch.sigmoid(self.beta_proj(x).to(ct)).transpose(1, 2)  # (B, H, T)
        log_a = F.logsigmoid(decay_logits(self.decay_proj, x)).transpose(1, 2)  # (B, H, T), <= 0
        if padding_mask is not None:
            real, zero = padding_mask[:, None], torch.zeros((), dtype=ct, device=x.device)  # (B, 1, T)
            k, v = (torch.where(real[..., None], t, zero) for t in (k, v))
            beta, log_a = torch.where(real, beta, zero), torch.where(real, log_a, zero)
        return q, k, v, beta, log_a

    def _read_out(self, o: Tensor, dtype) -> Tensor:
        """o (B, H, T, hd) -> per-head gain -> o_proj -> (B, T, D)."""
        B, H, T, hd = o.shape
        o = o * self.out_gain.to(o.dtype)[:, None, None]
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * hd).to(dtype))

    def _mix(self, x: Tensor, padding_mask, position_embeddings, with_state: bool = False):
        q, k, v = self.qkv(x, position_embeddings, padding_mask)  # (B, H, T, hd), RoPE applied
        o, S = gated_delta_chunked(*self._inputs(x, q, k, v, padding_mask), chunk=self.chunk)
        y = self._read_out(o, x.dtype)
        return (y, {"S": S}) if with_state else y

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, position_embeddings)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        """Token by token: S = a (I - beta k k^T) S + beta k v^T, o = S^T q."""
        q, k, v = self.qkv(x, position_embeddings, padding_mask)
        q, k, v, beta, log_a = self._inputs(x, q, k, v, padding_mask)
        B, H, T, hd = q.shape
        eye = torch.eye(hd, dtype=q.dtype, device=q.device)
        S = q.new_zeros(B, H, hd, hd)
        outs = []
        for t in range(T):
            kt, bt, at = k[:, :, t], beta[:, :, t, None, None], log_a[:, :, t, None, None].exp()
            S = at * (eye - bt * kt[..., :, None] * kt[..., None, :]) @ S + bt * kt[..., :, None] * v[:, :, t, None, :]
            outs.append((S.transpose(-1, -2) @ q[:, :, t, :, None])[..., 0])
        return self._read_out(torch.stack(outs, dim=2), x.dtype)

    def _init_state(self, batch: int, device, dtype) -> State:
        return {"S": torch.zeros(batch, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype)}

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        q, k, v = self.step_qkv(x_t, state, position_embeddings)  # (B, H, 1, hd)
        pad = None if padding_mask is None else padding_mask[:, None]
        q, k, v, beta, log_a = (t[:, :, 0] for t in self._inputs(x_t[:, None], q, k, v, pad))
        o, S = gated_delta_step(q, k, v, beta, log_a, state["S"])
        return self._read_out(o[:, :, None], x_t.dtype)[:, 0], {"S": S}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        return self._mix(x, padding_mask, position_embeddings, with_state=True)
