"""Frequency bands: local softmax attention for the high band + a low-pass FFT branch for long range.

The split follows the observation behind hybrid long-convolution models (H3, Hyena, Based) and
sliding-window models (Longformer, Mistral): attention over a short window resolves fine,
content-dependent detail, while what lies beyond the window is well summarised by smooth,
low-frequency averages, which an FFT convolution computes in O(T log T).

    out = o_proj( SWA_window(q, k, v) + conv(v, k_low) )

* SWA: causal sliding-window softmax attention (each query sees the last ``window`` keys; blocked,
  O(T * window) memory), with
  q/k/v/o, optional q/k RMS norms (Qwen3, Gemma3), the attention scale and rotary embeddings
  copied from / passed by the teacher, so with ``window >= T`` and a zero FFT branch it *is*
  the teacher's attention.
* Low band: per value channel, a learned mix of ``n_bands`` causal exponential moving
  averages, ``k_low[c, tau] = sum_b w[c, b] (1 - l_b) l_b^tau`` with time constants
  ``1/(1 - l_b)`` log-spaced from ``window`` to ``kernel_len`` tokens: low-pass filters defined
  in physical lags, applied by a zero-padded FFT. ``w`` starts at zero. The EMAs are exact
  first-order IIR filters (not truncated), so decoding keeps ``n_bands`` values per channel.

Decoding state: the last ``window`` keys / values (a ring) plus the EMA values; O(window) per token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State
from .functional import (causal_conv, causal_conv_naive, ema_basis, ema_final_state, ema_step, local_attention,
                         local_causal_mask)
from .qkv import QKVMixer
from .registry import register_mixer


@register_mixer("frequency_band")
class FrequencyBand(QKVMixer):
    """Args:
        d_model: model width D.
        window: keys each query attends to, itself included (default 64).
        fft_branch: add the low-frequency FFT branch (default True); False = sliding window alone.
        n_bands: number of low-pass filters in the FFT branch (default 8).
        kernel_len: longest lag of the FFT branch (default 2048).
        qk_norm: RMS-normalise q and k per head (Qwen3 / Gemma3 style).
        rope: rotate q and k (default True); rope_theta: rotary base used when no teacher tables are passed.
        n_heads, n_kv_heads, head_dim, bias: attention geometry.
    """

    def __init__(self, d_model: int, *, window: int = 64, fft_branch: bool = True, n_bands: int = 8,
                 kernel_len: int = 2048, qk_norm: bool = False, rope: bool = True, rope_theta: float = 10000.0,
                 n_heads: int | None = None, n_kv_heads: int | None = None, head_dim: int | None = None,
                 bias: bool = False, causal: bool = True) -> None:
        super().__init__(d_model, qk_norm=qk_norm, rope=rope, rope_theta=rope_theta, n_heads=n_heads,
                         n_kv_heads=n_kv_heads, head_dim=head_dim, bias=bias, causal=causal)
        if not causal:
            raise MixerValueError("frequency_band is causal by construction (sliding window + causal filter)")
        for arg, value in (("window", window), ("n_bands", n_bands), ("kernel_len", kernel_len)):
            if value < 1:
                raise MixerValueError(f"frequency_band {arg} must be >= 1, got {value}")
        self.window, self.kernel_len = window, kernel_len
        if fft_branch:
            tau = torch.logspace(math.log10(window), math.log10(max(kernel_len, window + 1)), n_bands).double()
            self.register_fixed_buffer("decays", 1.0 - 1.0 / tau)  # (n_bands,)
            self.band_weight = no_weight_decay(nn.Parameter(torch.zeros(self.inner_dim, n_bands)))  # (C, n_bands)
        else:
            self.band_weight = None

    state_form = "the last `window` keys / values + n_bands EMA values per channel; O(window) per token"

    def low_band_kernel(self, T: int, dtype) -> Tensor:
        return self.band_weight.to(dtype) @ ema_basis(self.decays, T, dtype)  # (C, T)

    def _mix(self, x: Tensor, padding_mask, position_embeddings, attend, conv, with_state: bool = False):
        B, T, _ = x.shape
        q, k, v = self.qkv(x, position_embeddings, padding_mask)
        y = attend(q, k, v, padding_mask).transpose(1, 2).reshape(B, T, self.inner_dim)  # (B, T, H*hd)
        ct = torch.promote_types(x.dtype, torch.float32)
        state = self.kv_final(k, v, padding_mask, self.window, ct) if with_state else {}
        if self.band_weight is not None:
            vc = self.zero_pads(v.transpose(1, 2).reshape(B, T, self.inner_dim), padding_mask)
            y = y + conv(vc, self.low_band_kernel(T, ct)).to(y.dtype)
            if with_state:
                state["ema"] = ema_final_state(vc, self.decays)
        y = self.o_proj(y)
        return (y, state) if with_state else y

    def _init_state(self, batch: int, device, dtype) -> State:
        state = self.kv_state(batch, device, dtype, slots=self.window)
        if self.band_weight is not None:
            state["ema"] = torch.zeros(batch, self.inner_dim, len(self.decays), device=device, dtype=dtype)
        return state

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        q, k, v = self.step_qkv(x_t, state, position_embeddings)
        y, new = self.kv_attend(q, k, v, state, padding_mask, window=self.window)  # (B, H, hd)
        y = y.reshape(x_t.shape[0], self.inner_dim)
        if self.band_weight is not None:
            vc = v[:, :, 0].reshape(x_t.shape[0], self.inner_dim)  # (B, C)
            if padding_mask is not None:
                vc = torch.where(padding_mask[:, None], vc, torch.zeros((), dtype=vc.dtype, device=vc.device))
            new["ema"] = ema_step(state["ema"], vc, self.decays)
            y = y + (new["ema"] * self.band_weight.to(new["ema"].dtype)).sum(-1)
        return self.o_proj(y.to(x_t.dtype)), new

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        return self._mix(x, padding_mask, position_embeddings, self._attend, causal_conv, with_state=True)

    def _attend(self, q, k, v, padding_mask):
        return local_attention(q, k, v, self.window, padding_mask, self.scaling.item())

    def _attend_naive(self, q, k, v, padding_mask):
        mask = local_causal_mask(q.shape[2], self.window, padding_mask, q.device)
        scores = torch.einsum("bhtd,bhsd->bhts", q, k) * self.scaling.item()
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v)

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, position_embeddings, self._attend, causal_conv)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, position_embeddings, self._attend_naive, causal_conv_naive)
