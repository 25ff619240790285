"""Query / key / value machinery shared by the mixers that attend (``frequency_band``, ``attention``).

The projections, optional per-head q/k RMS norms (Qwen3, Gemma3), the attention scale and rotary
embeddings are laid out like a Hugging Face attention module, so ``init_from_attention`` copies a
teacher's weights one to one and, with the teacher's rotary tables, reproduces its scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State, WaveMixer
from .functional import apply_rope, rope_at, rope_tables


def decay_gate(d_model: int, n_heads: int, min_tau: float, max_tau: float, mixer: str) -> nn.Linear:
    """A per-head data-dependent decay ``log a_t = logsigmoid(W x_t + b)``: W = 0 and b such that the heads'
    time constants ``1 / (1 - a)`` start log-spaced over ``[min_tau, max_tau]`` tokens."""
    if not 1.0 < min_tau <= max_tau:
        raise MixerValueError(f"{mixer} needs 1 < min_tau <= max_tau, got {min_tau}, {max_tau}")
    gate = nn.Linear(d_model, n_heads, bias=True)
    nn.init.zeros_(gate.weight)
    tau = torch.logspace(math.log10(min_tau), math.log10(max_tau), n_heads)
    with torch.no_grad():
        gate.bias.copy_(torch.log(tau - 1))  # logsigmoid(log(tau - 1)) = log(1 - 1/tau)
    no_weight_decay(gate.bias)
    return gate


def decay_logits(gate: nn.Linear, x: Tensor) -> Tensor:
    """(B, T, D) -> (B, T, H) ``W x_t + b`` of a :func:`decay_gate` in >= float32: its weights stay float32 in bf16
    models (the mixer's ``keep_float32``), and a time constant of 512 tokens needs its bias unrounded."""
    ct = torch.promote_types(x.dtype, torch.float32)
    return F.linear(x.to(ct), gate.weight.to(ct), gate.bias.to(ct))


def add_decay_gate(mixer: WaveMixer, min_tau: float, max_tau: float) -> None:
    """``mixer.decay_proj``: a :func:`decay_gate` over its heads, kept float32 in low-precision models (a time
    constant of 512 tokens needs its bias unrounded)."""
    mixer.decay_proj = decay_gate(mixer.d_model, mixer.n_heads, min_tau, max_tau, mixer.name)
    mixer.keep_float32("decay_proj.weight", "decay_proj.bias")


class HeadRMSNorm(nn.Module):
    """RMS norm over head_dim, as Qwen3's q_norm/k_norm."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("eps_", torch.tensor(float(eps)))  # saved, since teachers differ

    @property
    def eps(self) -> float:
        return self.eps_.item()

    @eps.setter
    def eps(self, value: float) -> None:
        self.eps_.fill_(value)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class QKVMixer(WaveMixer):
    """A mixer with teacher-shaped q/k/v/o projections; subclasses decide how queries attend."""

    def __init__(self, d_model: int, *, qk_norm: bool = False, rope: bool = True, rope_theta: float = 10000.0,
                 n_heads: int | None = None, n_kv_heads: int | None = None, head_dim: int | None = None,
                 bias: bool = False, causal: bool = True) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        if rope and self.head_dim % 2:
            raise MixerValueError(f"rotary embeddings turn pairs of dimensions: head_dim must be even, "
                                  f"got {self.head_dim}")
        self.rope, self.rope_theta = rope, rope_theta
        kv_dim = self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, self.inner_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.o_proj = nn.Linear(self.inner_dim, d_model, bias=False)
        self.q_norm = HeadRMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = HeadRMSNorm(self.head_dim) if qk_norm else None
        # Saved, so a reloaded student keeps a teacher's non-default scale (Gemma3's query_pre_attn_scalar).
        self.register_fixed_buffer("scaling", torch.tensor(float(self.head_dim) ** -0.5), persistent=True)

    @torch.no_grad()
    def init_from_attention(self, attn: nn.Module) -> None:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            mine, theirs = getattr(self, name), getattr(attn, name)
            mine.weight.copy_(theirs.weight)
            if mine.bias is not None and theirs.bias is not None:
                mine.bias.copy_(theirs.bias)
        for name in ("q_norm", "k_norm"):
            mine, theirs = getattr(self, name), getattr(attn, name, None)
            if mine is not None and theirs is not None:
                mine.eps = float(getattr(theirs, "variance_epsilon", getattr(theirs, "eps", mine.eps)))
                # Families store the scale differently (Gemma: 1 + w); read the effective scale off the
                # teacher's norm itself: norm(ones) = scale / sqrt(1 + eps).
                ones = torch.ones(1, self.head_dim, dtype=theirs.weight.dtype, device=theirs.weight.device)
                mine.weight.copy_(theirs(ones)[0].float() * (1 + mine.eps) ** 0.5)
        self.scaling.fill_(float(attn.scaling))

    def qkv(self, x: Tensor, position_embeddings, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, H, T, hd) queries, keys and values, KV heads repeated for grouped-query attention.

        Without the teacher's rotary tables, positions count real tokens only (0 at the first one),
        as Hugging Face's ``generate`` numbers a left-padded row.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd)
        if self.rope:
            if position_embeddings is None and padding_mask is not None:
                positions = (padding_mask.long().cumsum(1) - 1).clamp_min(0)  # (B, T)
                position_embeddings = rope_at(positions, self.head_dim, self.rope_theta, x.dtype)
            elif position_embeddings is None:
                position_embeddings = rope_tables(T, self.head_dim, self.rope_theta, x.device, x.dtype)
            cos, sin = (p.to(x.dtype).expand(B, -1, -1) for p in position_embeddings)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.transpose(1, 2).repeat_interleave(rep, dim=1)  # (B, H, T, hd)
        return q, k, v

    def step_qkv(self, x_t: Tensor, state: State, position_embeddings) -> tuple[Tensor, Tensor, Tensor]:
        """(B, H, 1, hd) query, key and value of one token x_t (B, D) at position ``state["pos"]``."""
        if position_embeddings is None and self.rope:
            position_embeddings = rope_at(state["pos"], self.head_dim, self.rope_theta, x_t.dtype)
        pe = None if position_embeddings is None else tuple(p[:, None] for p in position_embeddings)
        return self.qkv(x_t[:, None], pe)

    def kv_state(self, batch: int, device, dtype, slots: int) -> State:
        """Key / value memory: ``slots`` entries for a sliding window (oldest first), 0 for a growing cache."""
        shape = (batch, self.n_heads, slots, self.head_dim)
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return {"k": zeros, "v": zeros.clone(), "valid": torch.zeros(batch, slots, dtype=torch.bool, device=device)}

    @staticmethod
    def kv_final(k: Tensor, v: Tensor, padding_mask: Tensor | None, window: int | None, dtype) -> State:
        """The key / value memory after a prefill: the last ``window`` keys (all when None), pads invalid."""
        B, H, T, hd = k.shape
        valid = torch.ones(B, T, dtype=torch.bool, device=k.device) if padding_mask is None else padding_mask
        if window is not None:
            short = max(0, window - T)  # fewer tokens than slots: invalid slots in front, as in kv_state
            k, v = (nn.functional.pad(t, (0, 0, short, 0))[:, :, -window:] for t in (k, v))
            valid = nn.functional.pad(valid, (short, 0), value=False)[:, -window:]
        return {"k": k.to(dtype), "v": v.to(dtype), "valid": valid}

    @staticmethod
    def kv_push(state: State, k: Tensor, v: Tensor, padding_mask, window: int | None) -> State:
        """The memory with one more key / value (B, H, 1, hd); a window drops its oldest entry."""
        B = k.shape[0]
        real = torch.ones(B, 1, dtype=torch.bool, device=k.device) if padding_mask is None else padding_mask[:, None]
        keep = slice(1, None) if window is not None else slice(None)
        return {"k": torch.cat([state["k"][:, :, keep], k.to(state["k"].dtype)], dim=2),  # (B, H, S, hd)
                "v": torch.cat([state["v"][:, :, keep], v.to(state["v"].dtype)], dim=2),
                "valid": torch.cat([state["valid"][:, keep], real], dim=1)}  # (B, S)

    def kv_attend(self, q: Tensor, k: Tensor, v: Tensor, state: State, padding_mask, window: int | None):
        """Append one key / value (B, H, 1, hd) to the memory and attend q over it: ((B, H, hd), next memory).

        The new token always sees itself (as a padded query does in the parallel form), so no row
        of the softmax is empty; pads are never attended to by later tokens.
        """
        memory = self.kv_push(state, k, v, padding_mask, window)
        see = memory["valid"].clone()
        see[:, -1] = True
        ks = memory["k"]
        scores = torch.einsum("bhd,bhsd->bhs", q[:, :, 0].to(ks.dtype), ks) * self.scaling.to(ks.dtype)
        scores = scores.masked_fill(~see[:, None], float("-inf"))
        return torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), memory["v"]), memory
