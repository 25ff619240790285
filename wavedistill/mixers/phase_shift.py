"""Learned phase rotations: a per-channel causal all-pass filter (the "phaser" of audio DSP).

An all-pass filter keeps the magnitude of every frequency and only rotates its phase, i.e. it
delays different frequencies by different amounts. Learning phases per FFT bin and multiplying
``rfft(x)`` by ``exp(i*phi)`` is not causal (the impulse response has negative lags) and is tied
to the bin grid of one length. The causal, length-free form is a cascade of first-order
all-pass sections (Mitra & Regalia, 1988):

    H_a(z) = (a + z^-1) / (1 + a z^-1),  |a| < 1,  phase(w) = -w - 2 atan(a sin w / (1 + a cos w)),

whose impulse response ``h[0] = a, h[n] = (1 - a^2)(-a)^(n-1)`` is computed in closed form over
physical lags and applied as a zero-padded FFT convolution. ``a`` is learned per channel and
section (``a = tanh(theta)``, so stability holds by construction). The naive reference runs the
IIR recurrence ``y[n] = a x[n] + x[n-1] - a y[n-1]`` token by token, which is also how the mixer
decodes: one previous input and output per section and channel.

Layout: ``out = o_proj(allpass(v_proj(x)))`` with v/o copyable from a teacher.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State, WaveMixer
from .functional import causal_conv
from .registry import register_mixer


@register_mixer("phase_shift")
class PhaseShift(WaveMixer):
    """Args:
        d_model: model width D.
        n_sections: first-order all-pass sections in cascade per channel (default 2).
        n_heads, n_kv_heads, head_dim, bias: projection geometry.
    """

    def __init__(self, d_model: int, *, n_sections: int = 2, n_heads: int | None = None,
                 n_kv_heads: int | None = None, head_dim: int | None = None, bias: bool = False,
                 causal: bool = True) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        self.causal_only("a causal IIR all-pass filter")
        if n_sections < 1:
            raise MixerValueError(f"phase_shift n_sections must be >= 1, got {n_sections}")
        self.add_value_projections()
        # Coefficients spread over (-0.5, 0.9): from a sign-flipped delay to slow phase rotations.
        a0 = torch.linspace(-0.5, 0.9, self.inner_dim)[:, None].repeat(1, n_sections)
        self.theta = no_weight_decay(nn.Parameter(torch.atanh(a0)))  # (C, S)
        self.keep_float32("theta")  # a pole of 0.9 rounded to bf16 (0.8984) moves every lag's power of it

    state_form = "the previous input and output of each all-pass section; O(1) per token"

    def coefficients(self) -> Tensor:
        return torch.tanh(self.theta)  # (C, S)

    @staticmethod
    def section_kernel(a: Tensor, T: int) -> Tensor:
        """Impulse response of one section per channel over lags 0..T-1; a (C,) -> (C, T)."""
        powers = torch.cumprod((-a)[:, None].expand(-1, max(T - 2, 0)), dim=1)  # (-a)^1 .. (-a)^(T-2)
        powers = torch.cat([torch.ones_like(a)[:, None], powers], dim=1)  # (-a)^0 .. (-a)^(T-2)
        return torch.cat([a[:, None], (1 - a * a)[:, None] * powers], dim=1)[:, :T]

    def kernel(self, T: int, dtype) -> Tensor:
        a = self.coefficients().to(dtype)
        k = self.section_kernel(a[:, 0], T)
        for s in range(1, a.shape[1]):
            # Truncating the cascade at lag T is exact: outputs up to T-1 never use longer lags.
            k = causal_conv(k.T[None], self.section_kernel(a[:, s], T))[0].T
        return k  # (C, T)

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        v = self.zero_pads(self.v_proj(x), padding_mask)  # (B, T, C)
        ct = torch.promote_types(v.dtype, torch.float32)
        return self.o_proj(causal_conv(v, self.kernel(v.shape[1], ct)))

    def _init_state(self, batch: int, device, dtype) -> State:
        shape = (batch, self.inner_dim, self.theta.shape[1])
        return {"x_prev": torch.zeros(shape, device=device, dtype=dtype),
                "y_prev": torch.zeros(shape, device=device, dtype=dtype)}

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        u = self.v_proj(x_t)  # (B, C)
        if padding_mask is not None:
            u = torch.where(padding_mask[:, None], u, torch.zeros((), dtype=u.dtype, device=u.device))
        u = u.to(state["x_prev"].dtype)
        a = self.coefficients().to(u.dtype)  # (C, S)
        ins, outs = [], []
        for s in range(a.shape[1]):
            y = a[:, s] * u + state["x_prev"][..., s] - a[:, s] * state["y_prev"][..., s]
            ins.append(u)
            outs.append(y)
            u = y
        return self.o_proj(u.to(x_t.dtype)), {"x_prev": torch.stack(ins, -1), "y_prev": torch.stack(outs, -1)}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        v = self.zero_pads(self.v_proj(x), padding_mask)  # (B, T, C)
        ct = torch.promote_types(v.dtype, torch.float32)
        a = self.coefficients().to(ct)
        # Section by section, to hand each section's last input and output to the recurrence.
        ins, outs, u = [], [], v.to(ct)
        for s in range(a.shape[1]):
            ins.append(u[:, -1])
            u = causal_conv(u, self.section_kernel(a[:, s], u.shape[1]))
            outs.append(u[:, -1])
        return self.o_proj(u.to(x.dtype)), {"x_prev": torch.stack(ins, -1), "y_prev": torch.stack(outs, -1)}

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        v = self.zero_pads(self.v_proj(x), padding_mask)
        a = self.coefficients().to(v.dtype)
        for s in range(a.shape[1]):
            prev_x = torch.zeros_like(v[:, 0])
            prev_y = torch.zeros_like(v[:, 0])
            out = []
            for t in range(v.shape[1]):
                y = a[:, s] * v[:, t] + prev_x - a[:, s] * prev_y
                out.append(y)
                prev_x, prev_y = v[:, t], y
            v = torch.stack(out, dim=1)
        return self.o_proj(v)

    def spectrum(self, n_freqs: int = 256) -> dict[str, Tensor]:
        w = torch.linspace(0, torch.pi, n_freqs)
        z = torch.exp(-1j * w)  # z^-1 on the unit circle
        a = self.coefficients().detach().double()[..., None]  # (C, S, 1)
        H = ((a + z) / (1 + a * z)).prod(dim=1)  # (C, F)
        return {"magnitude": H.abs().float(), "phase": H.angle().float()}
