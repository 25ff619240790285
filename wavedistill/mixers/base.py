"""The mixer contract shared by every registered token mixer."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import MixerValueError


def default_head_dim(d_model: int) -> int:
    return 64 if d_model % 64 == 0 else 8


class WaveMixer(nn.Module):
    """Causal token mixer: (B, T, D) -> (B, T, D); in causal mode y[:, t] depends only on x[:, : t + 1].

    Subclasses implement :meth:`mix` (the fast path) and :meth:`mix_naive` (a slow, obviously
    correct reference that tests compare against). :meth:`forward` zeroes padded positions first
    (with ``where``, so a NaN or a non-zero pad embedding cannot spread through an FFT).

    Mixers that work on "values" own ``v_proj`` (D -> H*hd) and ``o_proj`` (H*hd -> D) shaped like
    a teacher's attention, so :meth:`init_from_attention` can copy them (KV heads repeated for GQA).
    """

    name: ClassVar[str]

    def __init__(self, d_model: int, *, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, causal: bool = True, bias: bool = False) -> None:
        super().__init__()
        if d_model <= 0:
            raise MixerValueError(f"d_model must be positive, got {d_model}")
        self.d_model = d_model
        self.head_dim = head_dim or default_head_dim(d_model)
        self.n_heads = n_heads or max(1, d_model // self.head_dim)
        self.n_kv_heads = n_kv_heads or self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise MixerValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        self.inner_dim = self.n_heads * self.head_dim
        self.causal = causal
        self.bias = bias

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                position_embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x: (B, T, D); padding_mask: (B, T) bool, True = real token; position_embeddings: (cos, sin)."""
        if padding_mask is not None:
            x = torch.where(padding_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return self.mix(x, padding_mask=padding_mask, position_embeddings=position_embeddings)

    def forward_naive(self, x: Tensor, padding_mask: Tensor | None = None,
                      position_embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if padding_mask is not None:
            x = torch.where(padding_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return self.mix_naive(x, padding_mask=padding_mask, position_embeddings=position_embeddings)

    def mix(self, x: Tensor, padding_mask: Tensor | None, position_embeddings) -> Tensor:
        raise NotImplementedError

    def mix_naive(self, x: Tensor, padding_mask: Tensor | None, position_embeddings) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def zero_pads(u: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Zero (B, T, C) features at padded positions; needed after a biased projection of a zeroed input."""
        if padding_mask is None:
            return u
        return torch.where(padding_mask[..., None], u, torch.zeros((), dtype=u.dtype, device=u.device))

    def add_value_projections(self) -> None:
        self.v_proj = nn.Linear(self.d_model, self.inner_dim, bias=self.bias)
        self.o_proj = nn.Linear(self.inner_dim, self.d_model, bias=False)

    @torch.no_grad()
    def init_from_attention(self, attn: nn.Module) -> None:
        """Copy the teacher's projections that this mixer shares (v/o by default)."""
        if hasattr(self, "v_proj"):
            self.v_proj.weight.copy_(repeat_kv_rows(attn.v_proj.weight, self.n_heads, self.n_kv_heads))
            if self.v_proj.bias is not None and attn.v_proj.bias is not None:
                self.v_proj.bias.copy_(repeat_kv_rows(attn.v_proj.bias, self.n_heads, self.n_kv_heads))
        if hasattr(self, "o_proj"):
            self.o_proj.weight.copy_(attn.o_proj.weight)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, heads={self.n_heads}x{self.head_dim}, causal={self.causal}"


def repeat_kv_rows(w: Tensor, n_heads: int, n_kv_heads: int) -> Tensor:
    """(n_kv*hd, ...) -> (n_heads*hd, ...) with KV head j serving query heads j*r .. j*r+r-1 (HF ``repeat_kv``)."""
    rep = n_heads // n_kv_heads
    head_dim = w.shape[0] // n_kv_heads
    return w.reshape(n_kv_heads, head_dim, *w.shape[1:]).repeat_interleave(rep, dim=0).reshape(
        n_heads * head_dim, *w.shape[1:])


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    """Tag a parameter (filter taps, phases, decays) that weight decay would pull towards a wrong prior."""
    p._no_weight_decay = True
    return p
