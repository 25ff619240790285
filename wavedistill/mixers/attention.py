"""Softmax attention (Vaswani et al., 2017) through PyTorch SDPA: the baseline the wave mixers are measured against.

Not a wave mixer. It is registered so that the lab trains it inside exactly the same model as every
wave mixer (``--mixer attention``), and so that surgery can rebuild a teacher's own attention as a
control: with the teacher's q/k/v/o, norms, scale and rotary tables it computes what the teacher does.
Causal by default (each query sees keys <= t); ``causal=False`` is the bidirectional encoder form,
which causal-LM surgery refuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import State
from .functional import local_causal_mask
from .qkv import QKVMixer
from .registry import register_mixer


@register_mixer("attention")
class Attention(QKVMixer):
    """Args:
        d_model: model width D.
        causal: mask future keys (default True); False attends over the whole (unpadded) sequence.
        qk_norm: RMS-normalise q and k per head (Qwen3 / Gemma3 style).
        rope: rotate q and k (default True); rope_theta: rotary base used when no teacher tables are passed.
        n_heads, n_kv_heads, head_dim, bias: attention geometry.
    """

    def __init__(self, d_model: int, *, causal: bool = True, qk_norm: bool = False, rope: bool = True,
                 rope_theta: float = 10000.0, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = False) -> None:
        super().__init__(d_model, qk_norm=qk_norm, rope=rope, rope_theta=rope_theta, n_heads=n_heads,
                         n_kv_heads=n_kv_heads, head_dim=head_dim, bias=bias, causal=causal)

    state_form = "a key / value cache that grows by one entry per token; O(T) per token"

    def mask(self, T: int, padding_mask: Tensor | None, device) -> Tensor | None:
        """(B or 1, 1, T, T) bool, True = may attend; None = plain causal (SDPA's is_causal) or nothing."""
        if padding_mask is None:
            return None
        if self.causal:
            return local_causal_mask(T, T, padding_mask, device)
        keep = padding_mask[:, None, :] | torch.eye(T, dtype=torch.bool, device=device)[None]  # (B, T, T)
        return keep[:, None]

    def _out(self, y: Tensor) -> Tensor:
        B, H, T, hd = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * hd))

    def _mix(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(x, position_embeddings, padding_mask)
        mask = self.mask(x.shape[1], padding_mask, x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
                                           scale=self.scaling.item())
        return self._out(y), k, v

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, position_embeddings)[0]

    def _init_state(self, batch: int, device, dtype) -> State:
        return self.kv_state(batch, device, dtype, slots=0)

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        q, k, v = self.step_qkv(x_t, state, position_embeddings)
        y, memory = self.kv_attend(q, k, v, state, padding_mask, window=None)  # (B, H, hd)
        return self.o_proj(y.reshape(x_t.shape[0], -1).to(x_t.dtype)), {**state, **memory}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        y, k, v = self._mix(x, padding_mask, position_embeddings)
        return y, self.kv_final(k, v, padding_mask, None, torch.promote_types(x.dtype, torch.float32))

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        q, k, v = self.qkv(x, position_embeddings, padding_mask)
        T = x.shape[1]
        mask = self.mask(T, padding_mask, x.device)
        if mask is None:
            mask = torch.ones(1, 1, T, T, dtype=torch.bool, device=x.device)
            mask = mask.tril() if self.causal else mask
        scores = torch.einsum("bhtd,bhsd->bhts", q, k) * self.scaling.item()
        scores = scores.masked_fill(~mask, float("-inf"))
        return self._out(torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v))
