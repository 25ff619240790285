"""Learned frequency response: a per-channel long causal convolution (the Hyena / H3 / GFNet line).

A learned filter applied in the frequency domain, ``y = irfft(rfft(v) * H)``, is a convolution
with the filter's impulse response. To be causal that impulse response must vanish at negative
lags, and the FFT must be zero-padded to at least 2T (otherwise it is circular and the future
leaks). So the filter is stored in its causal, physical-lag form: ``kernel[c, tau]`` for lags
0..kernel_len-1, applied by a zero-padded FFT; its frequency response (for plots) is
``rfft(kernel)``. The same taps mean the same thing at every sequence length, and tokens
further than ``kernel_len`` back are simply out of reach (a finite impulse response).

Layout (all per value channel c = head * head_dim + i):
    v = v_proj(x); y = conv(v, kernel); optional input-dependent gate y *= sigmoid(g_proj(x));
    out = o_proj(y).
v_proj / o_proj can be copied from a teacher's attention (KV heads repeated for GQA). Kernels
start as normalised exponential moving averages with time constants log-spaced from 1 to
kernel_len, i.e. a bank of "average over the recent past" filters, close to what many
attention heads do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import WaveMixer, no_weight_decay
from .functional import causal_conv, causal_conv_naive
from .registry import register_mixer


@register_mixer("learned_gate")
class LearnedGate(WaveMixer):
    """Args:
        d_model: model width D.
        kernel_len: longest lag the filter reaches (default 512).
        gate: multiply by an input-dependent sigmoid gate (default True).
        n_heads, n_kv_heads, head_dim, bias: projection geometry.
    """

    def __init__(self, d_model: int, *, kernel_len: int = 512, gate: bool = True, n_heads: int | None = None,
                 n_kv_heads: int | None = None, head_dim: int | None = None, bias: bool = False,
                 causal: bool = True, layer_idx: int | None = None) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        if not causal:
            raise ValueError("learned_gate is a causal convolution; it has no bidirectional form")
        self.kernel_len = kernel_len
        self.add_value_projections()
        self.kernel = no_weight_decay(nn.Parameter(self._ema_kernels(self.inner_dim, kernel_len)))  # (C, L)
        self.g_proj = nn.Linear(d_model, self.inner_dim, bias=True) if gate else None
        if gate:
            # Start with the gate ~open (sigmoid(3) = 0.95) so the initial mixer is the plain filter.
            nn.init.zeros_(self.g_proj.weight)
            nn.init.constant_(self.g_proj.bias, 3.0)

    @staticmethod
    def _ema_kernels(channels: int, length: int) -> Tensor:
        tau = torch.logspace(0, math.log10(max(length, 2)), channels)  # (C,) time constants in tokens
        lag = torch.arange(length, dtype=torch.float32)
        k = torch.exp(-lag[None] / tau[:, None])
        return k / k.sum(-1, keepdim=True)

    def _mix(self, x: Tensor, padding_mask, conv) -> Tensor:
        v = self.zero_pads(self.v_proj(x), padding_mask)  # (B, T, C)
        y = conv(v, self.kernel)  # (B, T, C)
        if self.g_proj is not None:
            y = y * torch.sigmoid(self.g_proj(x))
        return self.o_proj(y)

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, causal_conv)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, causal_conv_naive)

    def spectrum(self) -> dict[str, Tensor]:
        H = torch.fft.rfft(self.kernel.detach().float(), n=2 * self.kernel_len, dim=-1)  # (C, F)
        return {"magnitude": H.abs(), "phase": H.angle()}
