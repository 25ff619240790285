"""Learned frequency response: a per-channel long causal convolution (the Hyena / H3 / GFNet line).

A learned filter applied in the frequency domain, ``y = irfft(rfft(v) * H)``, is a convolution
with the filter's impulse response. To be causal that impulse response must vanish at negative
lags, and the FFT must be zero-padded to at least 2T (otherwise it is circular and the future
leaks). So the filter is stored in its causal, physical-lag form and applied by a zero-padded
FFT; its frequency response (for plots) is ``rfft(kernel)``. The same parameters mean the same
thing at every sequence length.

The impulse response of channel c is parameterised as

    kernel[c, tau] = taps[c, tau] (tau < short_len)  +  sum_b decay_weight[c, b] (1 - l_b) l_b^tau

free taps for fine detail at short lags plus a mix of ``n_decays`` exponential moving averages
with time constants ``1/(1 - l_b)`` log-spaced from 1 to ``kernel_len`` tokens for the long,
smooth part (a smooth frequency response). The EMAs are not truncated: each is an exact
first-order IIR filter, so the mixer decodes with a state of ``n_decays`` EMA values plus a ring
of the last ``short_len - 1`` inputs per channel, whatever the context length.

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

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State, WaveMixer
from .functional import causal_conv, causal_conv_naive, ema_basis, ema_final_state, ema_step
from .registry import register_mixer


@register_mixer("learned_gate")
class LearnedGate(WaveMixer):
    """Args:
        d_model: model width D.
        kernel_len: the slowest EMA's time constant in tokens (default 512).
        short_len: free filter taps at lags 0..short_len-1 (default 32).
        n_decays: EMA basis filters for the long part (default 16).
        gate: multiply by an input-dependent sigmoid gate (default True).
        n_heads, n_kv_heads, head_dim, bias: projection geometry.
    """

    def __init__(self, d_model: int, *, kernel_len: int = 512, short_len: int = 32, n_decays: int = 16,
                 gate: bool = True, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = False, causal: bool = True) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        self.causal_only("a causal convolution")
        for arg, value, low in (("kernel_len", kernel_len, 1), ("short_len", short_len, 1), ("n_decays", n_decays, 1)):
            if value < low:
                raise MixerValueError(f"learned_gate {arg} must be >= {low}, got {value}")
        self.kernel_len, self.short_len = kernel_len, min(short_len, kernel_len)
        self.add_value_projections()
        C = self.inner_dim
        tau = torch.logspace(0, math.log10(max(kernel_len, 2)), n_decays)  # (n_decays,) time constants, tokens
        self.register_fixed_buffer("decays", 1.0 - 1.0 / tau.double())
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

    state_form = "n_decays EMA values + a ring of short_len - 1 inputs per channel; O(1) per token"

    def kernel(self, T: int, dtype=torch.float32) -> Tensor:
        """Impulse response over lags 0..T-1; (C, T)."""
        k = self.decay_weight.to(dtype) @ ema_basis(self.decays, T, dtype)  # (C, T)
        s = min(T, self.short_len)
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

    def _mix(self, x: Tensor, padding_mask, conv) -> tuple[Tensor, Tensor]:
        v = self.zero_pads(self.v_proj(x), padding_mask)  # (B, T, C)
        y = conv(v, self.kernel(x.shape[1], torch.promote_types(x.dtype, torch.float32)))  # (B, T, C)
        return self._out(x, y), v

    def _out(self, x: Tensor, y: Tensor) -> Tensor:
        if self.g_proj is not None:
            y = y * torch.sigmoid(self.g_proj(x))
        return self.o_proj(y.to(x.dtype))

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, causal_conv)[0]

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, causal_conv_naive)[0]

    def _init_state(self, batch: int, device, dtype) -> State:
        C = self.inner_dim
        return {"ema": torch.zeros(batch, C, len(self.decays), device=device, dtype=dtype),  # (B, C, n_decays)
                "ring": torch.zeros(batch, C, self.short_len - 1, device=device, dtype=dtype)}  # oldest .. newest

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        v = self.v_proj(x_t)  # (B, C)
        if padding_mask is not None:
            v = torch.where(padding_mask[:, None], v, torch.zeros((), dtype=v.dtype, device=v.device))
        ema = ema_step(state["ema"], v, self.decays)
        recent = torch.cat([state["ring"], v.to(ema.dtype)[..., None]], dim=-1)  # (B, C, short_len): v_{t-s+1} .. v_t
        y = (ema * self.decay_weight.to(ema.dtype)).sum(-1) + (recent * self.taps.to(ema.dtype).flip(-1)).sum(-1)
        return self._out(x_t, y), {"ema": ema, "ring": recent[..., 1:]}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        y, v = self._mix(x, padding_mask, causal_conv)
        ct = torch.promote_types(x.dtype, torch.float32)
        ring = torch.nn.functional.pad(v.to(ct).transpose(1, 2), (self.short_len - 1, 0))[..., v.shape[1]:]
        return y, {"ema": ema_final_state(v, self.decays), "ring": ring}

    def spectrum(self) -> dict[str, Tensor]:
        H = torch.fft.rfft(self.kernel(self.kernel_len).detach().float(), n=2 * self.kernel_len, dim=-1)  # (C, F)
        return {"magnitude": H.abs(), "phase": H.angle()}
