"""Learned frequency response: a per-channel long causal convolution (the Hyena / H3 / GFNet line).

A learned filter applied in the frequency domain, ``y = irfft(rfft(v) * H)``, is a convolution
with the filter's impulse response. To be causal that impulse response must vanish at negative
lags, and the FFT must be zero-padded to at least 2T (otherwise it is circular and the future
leaks). So the filter is stored in its causal, physical-lag form and applied by a zero-padded
FFT; its frequency response (for plots) is ``rfft(kernel)``. The same parameters mean the same
thing at every sequence length; tokens further back than ``kernel_len`` are out of reach.

The impulse response of channel c is parameterised as

    kernel[c, tau] = taps[c, tau] (tau < short_len)  +  sum_b decay_weight[c, b] (1 - l_b) l_b^tau

free taps for fine detail at short lags plus a mix of ``n_decays`` exponential moving averages
with time constants ``1/(1 - l_b)`` log-spaced from 1 to ``kernel_len`` tokens for the long,
smooth part (a smooth frequency response). ``short_len = kernel_len`` gives a fully free filter;
the smooth parameterisation has ~10x fewer parameters and generalises better to held-out text.

Layout (per value channel c = head * head_dim + i):
    v = v_proj(x); y = conv(v, kernel); optional input-dependent gate y *= sigmoid(g_proj(x));
    out = o_proj(y).
v_proj / o_proj can be copied from a teacher's attention (KV heads repeated for GQA). Each
channel starts as one EMA ("average over the recent past"), time constants log-spaced over channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import MixerValueError
from .base import WaveMixer, no_weight_decay
from .functional import causal_conv, causal_conv_naive, ema_basis
from .registry import register_mixer


@register_mixer("learned_gate")
class LearnedGate(WaveMixer):
    """Args:
        d_model: model width D.
        kernel_len: longest lag the filter reaches (default 512).
        short_len: free filter taps at lags 0..short_len-1 (default 32).
        n_decays: EMA basis filters for the long part (default 16).
        gate: multiply by an input-dependent sigmoid gate (default True).
        n_heads, n_kv_heads, head_dim, bias: projection geometry.
    """

    def __init__(self, d_model: int, *, kernel_len: int = 512, short_len: int = 32, n_decays: int = 16,
                 gate: bool = True, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = False, causal: bool = True,
                 layer_idx: int | None = None) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        if not causal:
            raise MixerValueError("learned_gate is a causal convolution; it has no bidirectional form")
        self.kernel_len, self.short_len = kernel_len, min(short_len, kernel_len)
        self.add_value_projections()
        C = self.inner_dim
        tau = torch.logspace(0, math.log10(max(kernel_len, 2)), n_decays)  # (n_decays,) time constants, tokens
        self.register_buffer("decays", 1.0 - 1.0 / tau, persistent=False)
        self.taps = no_weight_decay(nn.Parameter(torch.zeros(C, self.short_len)))  # (C, short_len)
        # Channel c starts as the EMA whose time constant is nearest its own log-spaced target.
        target = torch.logspace(0, math.log10(max(kernel_len, 2)), C)
        nearest = (tau[None].log() - target[:, None].log()).abs().argmin(-1)
        self.decay_weight = no_weight_decay(nn.Parameter(nn.functional.one_hot(nearest, n_decays).float()))
        self.g_proj = nn.Linear(d_model, C, bias=True) if gate else None
        if gate:
            # Start with the gate ~open (sigmoid(3) = 0.95) so the initial mixer is the plain filter.
            nn.init.zeros_(self.g_proj.weight)
            nn.init.constant_(self.g_proj.bias, 3.0)

    def kernel(self, T: int, dtype=torch.float32) -> Tensor:
        """Impulse response over lags 0..min(T, kernel_len)-1; (C, L)."""
        L = min(T, self.kernel_len)
        k = self.decay_weight.to(dtype) @ ema_basis(self.decays, L, dtype)  # (C, L)
        s = min(L, self.short_len)
        return torch.cat([k[:, :s] + self.taps[:, :s].to(dtype), k[:, s:]], dim=1)

    @torch.no_grad()
    def fit_toeplitz(self, head_kernels: Tensor) -> None:
        """Set the filters to given per-head kernels (H, L) over lags 0..L-1 (the ``fit`` stage).

        Channel c serves query head c // head_dim, whose values it convolves (v_proj repeats KV heads),
        so a head's Toeplitz fit of its attention map becomes the kernel of all its channels. Free taps
        take lags < short_len exactly; the EMA weights are the minimum-norm least-squares fit of the rest.
        """
        if head_kernels.shape[0] != self.n_heads:
            raise MixerValueError(f"expected a kernel per head ({self.n_heads}), got {head_kernels.shape[0]}")
        L = min(head_kernels.shape[1], self.kernel_len)
        target = head_kernels[:, :L].double().repeat_interleave(self.head_dim, dim=0)  # (C, L)
        basis = ema_basis(self.decays, L, torch.float64)  # (n_decays, L)
        s = min(self.short_len, L)
        # The fastest EMAs vanish beyond short lags, so the basis is rank-deficient there: pinv, not solve.
        weights = target[:, s:] @ torch.linalg.pinv(basis[:, s:], rtol=1e-10)  # (C, n_decays)
        self.decay_weight.copy_(weights)
        self.taps.zero_()
        self.taps[:, :s].copy_(target[:, :s] - (weights @ basis)[:, :s])

    def _mix(self, x: Tensor, padding_mask, conv) -> Tensor:
        v = self.zero_pads(self.v_proj(x), padding_mask)  # (B, T, C)
        y = conv(v, self.kernel(x.shape[1], torch.promote_types(x.dtype, torch.float32)))  # (B, T, C)
        if self.g_proj is not None:
            y = y * torch.sigmoid(self.g_proj(x))
        return self.o_proj(y)

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, causal_conv)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, causal_conv_naive)

    def spectrum(self) -> dict[str, Tensor]:
        H = torch.fft.rfft(self.kernel(self.kernel_len).detach().float(), n=2 * self.kernel_len, dim=-1)  # (C, F)
        return {"magnitude": H.abs(), "phase": H.angle()}
