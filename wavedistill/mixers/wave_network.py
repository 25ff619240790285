"""Wave Network: tokens as complex waves, mixed by interference or modulation.

Zhang et al., "Wave Network: An Ultra-Small Language Model" (2024, arXiv:2411.02674). Each
dimension k of a token vector w_j becomes a wave ``G_k * exp(i * alpha_jk)``: the magnitude
("global semantics") is the energy of that dimension over the text, ``G_k = sqrt(sum_j w_jk^2)``,
and the phase ("local semantics") is ``alpha_jk = arccos(w_jk / G_k)``. Two projections of the
input give two waves, combined by *interference* ``Z1 + Z2`` or *modulation* ``Z1 * Z2``.

Causal form: G is the running prefix energy, ``G_tk = sqrt(eps + sum_{s<=t} w_sk^2)``, so token
t only sees tokens <= t. Because ``cos(alpha) = w/G``, ``Re Z = w`` and ``Im Z = sqrt(G^2 - w^2)``;
the fast path uses that algebra, the naive path the literal arccos and complex exponential.
The output is ``o_proj(Re Z) + i_proj(Im Z)``; ``i_proj`` starts at zero. Decoding keeps the two
running energies per channel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import MixerValueError
from .base import State, WaveMixer
from .registry import register_mixer

MODES = ("interference", "modulation")


@register_mixer("wave_network")
class WaveNetwork(WaveMixer):
    """Args:
        d_model: model width D.
        mode: "interference" (Z1 + Z2) or "modulation" (Z1 * Z2).
        eps: added to the prefix energy so the phase is defined for all-zero prefixes.
        n_heads, n_kv_heads, head_dim, bias: projection geometry (v_proj/o_proj copyable from a teacher).
    """

    def __init__(self, d_model: int, *, mode: str = "interference", eps: float = 1e-6, n_heads: int | None = None,
                 n_kv_heads: int | None = None, head_dim: int | None = None, bias: bool = False,
                 causal: bool = True) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        if mode not in MODES:
            raise MixerValueError(f"wave_network mode must be one of {MODES}, got {mode!r}")
        if eps <= 0:
            raise MixerValueError(f"wave_network eps must be > 0 (it keeps the phase defined), got {eps}")
        self.mode = mode
        self.eps = eps
        self.add_value_projections()  # v_proj gives wave 1
        self.w_proj = nn.Linear(d_model, self.inner_dim, bias=bias)  # wave 2
        self.i_proj = nn.Linear(self.inner_dim, d_model, bias=False)
        nn.init.zeros_(self.i_proj.weight)

    state_form = "the running energy of each channel of both waves; O(1) per token"

    def _energy(self, u: Tensor) -> Tensor:
        if self.causal:
            return torch.sqrt(self.eps + (u * u).cumsum(dim=1))  # (B, T, C)
        return torch.sqrt(self.eps + (u * u).sum(dim=1, keepdim=True))

    def _wave(self, u: Tensor, G: Tensor | None = None) -> tuple[Tensor, Tensor]:
        G = self._energy(u) if G is None else G
        # Im = G sin(arccos(u/G)) = sqrt(G^2 - u^2), which is >= sqrt(eps) because G^2 includes u^2 + eps;
        # the clamp only guards round-off.
        return u, torch.sqrt((G * G - u * u).clamp_min(self.eps))

    def _combine(self, r1: Tensor, i1: Tensor, r2: Tensor, i2: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode == "interference":
            return r1 + r2, i1 + i2
        return r1 * r2 - i1 * i2, r1 * i2 + i1 * r2

    def _inputs(self, x: Tensor, padding_mask) -> tuple[Tensor, Tensor]:
        # Energies are running sums of squares: float32 at least, whatever the model's dtype.
        ct = torch.promote_types(x.dtype, torch.float32)
        return tuple(self.zero_pads(p(x), padding_mask).to(ct) for p in (self.v_proj, self.w_proj))

    def _read_out(self, re: Tensor, im: Tensor, dtype) -> Tensor:
        return self.o_proj(re.to(dtype)) + self.i_proj(im.to(dtype))

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        u1, u2 = self._inputs(x, padding_mask)
        return self._read_out(*self._combine(*self._wave(u1), *self._wave(u2)), x.dtype)

    def _init_state(self, batch: int, device, dtype) -> State:
        return {f"energy{i}": torch.zeros(batch, self.inner_dim, device=device, dtype=dtype) for i in (1, 2)}

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        u1, u2 = self._inputs(x_t[:, None], None if padding_mask is None else padding_mask[:, None])
        new, waves = {}, []
        for i, u in ((1, u1[:, 0]), (2, u2[:, 0])):  # (B, C)
            new[f"energy{i}"] = state[f"energy{i}"] + u.square()
            waves += self._wave(u, torch.sqrt(self.eps + new[f"energy{i}"]))
        return self._read_out(*self._combine(*waves), x_t.dtype), new

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        u1, u2 = self._inputs(x, padding_mask)
        y = self._read_out(*self._combine(*self._wave(u1), *self._wave(u2)), x.dtype)
        return y, {"energy1": u1.square().sum(1), "energy2": u2.square().sum(1)}

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        waves = []
        for u in (self.zero_pads(p(x), padding_mask) for p in (self.v_proj, self.w_proj)):
            G = self._energy(u)
            alpha = torch.arccos((u / G).clamp(-1, 1))
            waves.append(torch.polar(G, alpha))
        z = waves[0] + waves[1] if self.mode == "interference" else waves[0] * waves[1]
        return self.o_proj(z.real) + self.i_proj(z.imag)
