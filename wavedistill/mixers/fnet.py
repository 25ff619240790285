"""FNet: parameter-free Fourier token mixing (Lee-Thorp et al., 2021, arXiv:2105.03824).

Bidirectional FNet takes ``Re(FFT_seq(FFT_hidden(x)))``: every output sees every token, so it
exists here only as ``causal=False`` (for encoders); causal-LM surgery refuses it.

The causal form keeps FNet's idea, fixed Fourier bases instead of learned mixing weights, but
replaces the sequence DFT by its causal counterpart, a running (sliding) DFT: channel c of
token t holds ``(1/n_t) * sum_{s<=t} x[s, c] * cos(w_c (t - s))`` with fixed frequencies w_c
spread over [0, pi] radians per token and n_t the number of real tokens up to t. That is a
causal convolution with a cosine kernel, so it runs as a zero-padded FFT. The hidden-dimension
DFT (real part) is applied per token, as in FNet. The running DFT is a bank of rotating phasors,
``z_t = exp(i w_c) z_(t-1) + x_t``, whose real part is that cosine sum: decoding keeps one complex
value per channel and the count. With ``proj=True`` (the default for surgery),
teacher-initialisable value/output projections surround the parameter-free mixing so that
distillation has something to fit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import State, WaveMixer
from .functional import causal_conv, causal_conv_naive, fft_dtype
from .registry import register_mixer


@register_mixer("fnet")
class FNet(WaveMixer):
    """Args:
        d_model: model width D.
        proj: wrap the mixing in value/output projections (default True).
        causal: running-DFT form (True) or FNet's bidirectional 2-D DFT (False).
        n_heads, n_kv_heads, head_dim, bias: projection geometry (used when ``proj``).
    """

    def __init__(self, d_model: int, *, proj: bool = True, causal: bool = True, n_heads: int | None = None,
                 n_kv_heads: int | None = None, head_dim: int | None = None, bias: bool = False) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        self.proj = proj
        if proj:
            self.add_value_projections()
        width = self.inner_dim if proj else d_model
        self.register_fixed_buffer("freqs", torch.linspace(0, math.pi, width, dtype=torch.float64))  # (C,) rad/token

    state_form = "one rotating phasor per channel + the count of real tokens; O(1) per token"

    def _kernel(self, T: int, dtype) -> Tensor:
        lag = torch.arange(T, device=self.freqs.device, dtype=torch.float64)
        return torch.cos(self.freqs.double()[:, None] * lag[None]).to(dtype)  # (C, T)

    def _mix(self, x: Tensor, padding_mask, conv, with_state: bool = False):
        u = self.zero_pads(self.v_proj(x), padding_mask) if self.proj else x  # (B, T, C)
        B, T = u.shape[:2]
        ct = fft_dtype(u)
        if not self.causal:
            return self._read_out(torch.fft.fft2(u.to(ct), dim=(1, 2)).real, x.dtype)
        # Normalise by the number of real tokens so far, so left padding changes nothing.
        real = torch.ones(B, T, device=u.device, dtype=ct) if padding_mask is None else padding_mask.to(ct)
        count = real.cumsum(1)  # (B, T)
        seq = conv(u.to(ct), self._kernel(T, ct)) / count.clamp_min(1)[..., None]  # (B, T, C)
        y = self._read_out(torch.fft.fft(seq, dim=-1).real, x.dtype)
        if not with_state:
            return y
        # The phasor of token s has turned by w (T - 1 - s) at the end of the prompt.
        ang = self.freqs.to(ct)[None] * torch.arange(T - 1, -1, -1, device=u.device, dtype=ct)[:, None]  # (T, C)
        re = torch.einsum("btc,tc->bc", u.to(ct), ang.cos())
        im = torch.einsum("btc,tc->bc", u.to(ct), ang.sin())
        return y, {"re": re, "im": im, "count": count[:, -1]}

    def _read_out(self, y: Tensor, dtype) -> Tensor:
        y = y.to(dtype)
        return self.o_proj(y) if self.proj else y

    def _init_state(self, batch: int, device, dtype) -> State:
        C = len(self.freqs)
        zeros = torch.zeros(batch, C, device=device, dtype=dtype)
        return {"re": zeros, "im": zeros.clone(), "count": torch.zeros(batch, device=device, dtype=dtype)}

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        u = self.v_proj(x_t) if self.proj else x_t  # (B, C)
        real = torch.ones_like(state["count"]) if padding_mask is None else padding_mask.to(state["count"].dtype)
        u = u.to(state["re"].dtype) * real[:, None]
        # z <- exp(i w) z + u: the phasor of every earlier token turns by w per step.
        c, s = self.freqs.to(u.dtype).cos(), self.freqs.to(u.dtype).sin()
        re, im = c * state["re"] - s * state["im"] + u, s * state["re"] + c * state["im"]
        count = state["count"] + real
        y = self._read_out(torch.fft.fft(re / count.clamp_min(1)[:, None], dim=-1).real, x_t.dtype)
        return y, {"re": re, "im": im, "count": count}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        return self._mix(x, padding_mask, causal_conv, with_state=True)

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, causal_conv)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        if not self.causal:
            u = self.v_proj(x) if self.proj else x
            T, C = u.shape[1:]
            t, c = torch.arange(T, dtype=torch.float64), torch.arange(C, dtype=torch.float64)
            ft = torch.exp(-2j * math.pi * torch.outer(t, t) / T)  # (T, T) DFT matrix, complex128
            fc = torch.exp(-2j * math.pi * torch.outer(c, c) / C)
            y = torch.einsum("ts,bsc,cd->btd", ft, u.to(torch.complex128), fc).real.to(x.dtype)
            return self.o_proj(y) if self.proj else y
        return self._mix(x, padding_mask, causal_conv_naive)
