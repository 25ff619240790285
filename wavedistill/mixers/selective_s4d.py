"""Selective S4D: S4D whose step, input and read-out depend on the token (Mamba's selection).

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023), on S4D's
complex diagonal state (Gu et al., 2022); the scalar-per-head decay is Mamba-2's (Dao & Gu, 2024).

"The teacher with selectivity": per head h (head_dim value channels, n = state_dim / 2 complex
modes), the zero-order-hold discretisation of ``x' = A x + B_t u`` with a token-dependent step:

    h_t = exp(Delta_t A) h_(t-1) + (exp(Delta_t A) - 1) / A * B_t u_t^T        h_t in C^(n x head_dim)
    y_t = Re(C_t^T h_t) + D u_t,        A_n = -alpha + i omega_n,  Delta_t = softplus(w . x_t + b) >= 0

with ``B_t, C_t`` in C^n and ``Delta_t`` linear in the token (per head). A large Delta_t forgets the
state and writes the token (an event is *sampled*); Delta_t near 0 holds the state unchanged (it is
*kept*), so the mixer can gate on content, which S4D's fixed filter cannot. The real decay alpha is
one per head (S4D-Lin's -1/2 at init is shared by every mode anyway); each mode turns at its own
omega_n (init pi n) in *warped* time Lambda_t = sum_(r <= t) Delta_r.

Parallel form: with one decay per head the rotation separates,
``exp(A (Lambda_t - Lambda_s)) = exp(-alpha (Lambda_t - Lambda_s)) e^(i omega Lambda_t) e^(-i omega Lambda_s)``,
so ``q_t = C_t e^(i omega Lambda_t)``, ``k_s = Bbar_s B_s e^(-i omega Lambda_s)`` (Re q.k as a real dot
product of 2n features) run through the chunked decayed linear attention of :mod:`.scan` with
``log a_t = -alpha Delta_t`` (every exponent <= 0). The unit-modulus phases are reduced mod 2 pi in
float64, so long sequences lose no phase precision. :meth:`mix_naive` runs the recurrence above
token by token, and so does decoding (O(n head_dim) per head and token).

Pads: Delta = 0 there, so the state neither decays nor turns nor takes input.
Precision: Delta, alpha and omega (and the Delta projection) stay float32 in bf16 models (:meth:`keep_float32`).
Layout: ``out = o_proj(ssm(v_proj(x)))`` with v/o copyable from a teacher (KV heads repeated for GQA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State, WaveMixer
from .functional import complex_expm1
from .registry import register_mixer
from .s4d import check_modes
from .scan import decayed_linear_attention


@register_mixer("selective_s4d")
class SelectiveS4D(WaveMixer):
    """Args:
        d_model: model width D.
        state_dim: real state size per value channel, i.e. state_dim / 2 complex modes (default 32; even, >= 2).
        dt_min, dt_max: initial Delta (softplus of the bias), log-spaced across heads; the weight starts at 0.
        chunk: chunk length of the parallel form (default 64).
        n_heads, n_kv_heads, head_dim, bias: projection geometry.
    """

    state_form = "per head n complex modes x head_dim values (re, im); O(n head_dim) per token"

    def __init__(self, d_model: int, *, state_dim: int = 32, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 chunk: int = 64, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = False, causal: bool = True) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        self.causal_only("a causal recurrence")
        check_modes(self.name, state_dim, dt_min, dt_max)
        if chunk < 1:
            raise MixerValueError(f"selective_s4d chunk must be >= 1, got {chunk}")
        self.state_dim, self.chunk = state_dim, chunk
        H, n = self.n_heads, state_dim // 2
        self.add_value_projections()
        self.bc_proj = nn.Linear(d_model, 4 * H * n, bias=False)  # (re B, im B, re C, im C) per head and mode
        self.dt_proj = nn.Linear(d_model, H, bias=True)
        nn.init.zeros_(self.dt_proj.weight)
        dt = torch.logspace(math.log10(dt_min), math.log10(dt_max), H)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        no_weight_decay(self.dt_proj.bias)
        # S4D-Lin: A_n = -1/2 + i pi n. Decays and frequencies have no "zero" prior: no weight decay.
        self.log_alpha = no_weight_decay(nn.Parameter(torch.full((H,), math.log(0.5))))  # (H,)
        self.omega = no_weight_decay(nn.Parameter(math.pi * torch.arange(n).float().repeat(H, 1)))  # (H, n)
        # The selection sums over the sequence (warped time, phases): its parameters stay float32 in bf16 models.
        self.keep_float32("log_alpha", "omega", "dt_proj.weight", "dt_proj.bias")
        # Skip D starts at 0, as in s4d: a teacher-initialised v/o should start as a past average, not a copy.
        self.d_skip = nn.Parameter(torch.zeros(self.inner_dim))  # (C,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, state_dim={self.state_dim}"

    def _a(self, dtype) -> Tensor:
        """A = -alpha + i omega, complex (H, n)."""
        return torch.complex(-self.log_alpha.to(dtype).exp()[:, None].expand_as(self.omega), self.omega.to(dtype))

    def _selection(self, x: Tensor, padding_mask, ct) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(u (.., H, hd), Delta (.., H), B (.., H, n), C (.., H, n)) for x (.., D); Delta = u = 0 at pads."""
        H, hd, n = self.n_heads, self.head_dim, self.state_dim // 2
        u = self.zero_pads(self.v_proj(x), padding_mask).to(ct)
        dt = F.softplus(F.linear(x.to(ct), self.dt_proj.weight.to(ct), self.dt_proj.bias.to(ct)))  # in float32
        dt = self.zero_pads(dt, padding_mask)
        bc = self.bc_proj(x).to(ct).unflatten(-1, (4, H, n))
        b, c = torch.complex(bc[..., 0, :, :], bc[..., 1, :, :]), torch.complex(bc[..., 2, :, :], bc[..., 3, :, :])
        return u.unflatten(-1, (H, hd)), dt, b, c

    def _turning_frame(self, x: Tensor, padding_mask):
        """Heads-first inputs of the parallel form: u (B, H, T, hd), real q, k (B, H, T, 2n) with Re(q~ . k~) =
        q . k, log decays (B, H, T) and the frame's last turn e^(i omega Lambda_T) (B, H, n)."""
        ct = torch.promote_types(x.dtype, torch.float32)
        u, dt, b, c = self._selection(x, padding_mask, ct)
        u, dt, b, c = u.transpose(1, 2), dt.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2)  # heads first
        a = self._a(ct)[:, None]  # (H, 1, n)
        warped = dt.double().cumsum(-1)  # (B, H, T): Lambda_t
        phase = torch.remainder(warped[..., None] * self.omega.double()[:, None], 2 * math.pi).to(ct)  # (B, H, T, n)
        rot = torch.polar(torch.ones_like(phase), phase)
        q = c * rot
        k = b * complex_expm1(dt[..., None] * a) / a * rot.conj()
        # Re(q . k) as one real dot product: [Re q, Im q] . [Re k, -Im k].
        q, k = torch.cat([q.real, q.imag], -1), torch.cat([k.real, -k.imag], -1)
        return u, q, k, -self.log_alpha.to(ct).exp()[:, None] * dt, rot[:, :, -1]

    def _parallel(self, x: Tensor, padding_mask) -> tuple[Tensor, Tensor]:
        """(y (B, T, C) before o_proj, the final complex state (B, H, n, hd))."""
        B_, T, _ = x.shape
        n = self.state_dim // 2
        u, q, k, log_decay, last_turn = self._turning_frame(x, padding_mask)
        o, s = decayed_linear_attention(q, k, u, log_decay, self.chunk)  # (B, H, T, hd)
        y = o + self.d_skip.to(u.dtype).view(-1, 1, self.head_dim) * u
        h = last_turn[..., None] * torch.complex(s[:, :, :n], -s[:, :, n:])  # back from the turning frame
        return y.transpose(1, 2).reshape(B_, T, -1), h

    def mixing_matrix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        """Per head (B, H, T, T): M[t, s] = Re(C_t^T exp(A (Lambda_t - Lambda_s)) Bbar_s B_s) for s <= t (the
        skip D left out), zero at pad keys, where Delta = 0."""
        if padding_mask is not None:
            x = torch.where(padding_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        _, q, k, log_decay, _ = self._turning_frame(x, padding_mask)
        T = x.shape[1]
        g = log_decay.cumsum(-1)  # (B, H, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        decay = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        return decay * (q @ k.transpose(-1, -2))

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self.o_proj(self._parallel(x, padding_mask)[0].to(x.dtype))

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        """The recurrence token by token, with exp(Delta A) and (exp(Delta A) - 1) / A written out."""
        ct = torch.promote_types(x.dtype, torch.float32)
        u, dt, b, c = self._selection(x, padding_mask, ct)
        a = self._a(ct)
        h = torch.zeros(x.shape[0], self.n_heads, self.state_dim // 2, self.head_dim, dtype=a.dtype, device=x.device)
        ys = []
        for t in range(x.shape[1]):
            abar = torch.exp(dt[:, t, :, None] * a)  # (B, H, n)
            h = abar[..., None] * h + ((abar - 1) / a * b[:, t])[..., None] * u[:, t, :, None, :]
            ys.append((c[:, t, :, :, None] * h).sum(-2).real + self.d_skip.to(ct).view(-1, self.head_dim) * u[:, t])
        return self.o_proj(torch.stack(ys, dim=1).flatten(2).to(x.dtype))

    def _init_state(self, batch: int, device, dtype) -> State:
        shape = (batch, self.n_heads, self.state_dim // 2, self.head_dim)
        return {part: torch.zeros(shape, device=device, dtype=dtype) for part in ("re", "im")}

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        ct = state["re"].dtype
        u, dt, b, c = self._selection(x_t, padding_mask, ct)  # (B, H, hd), (B, H), (B, H, n), (B, H, n)
        dta = dt[..., None] * self._a(ct)  # (B, H, n)
        h = torch.exp(dta)[..., None] * torch.complex(state["re"], state["im"])
        h = h + (complex_expm1(dta) / self._a(ct) * b)[..., None] * u[:, :, None, :]  # (B, H, n, hd)
        y = (c[..., None] * h).sum(-2).real + self.d_skip.to(ct).view(-1, self.head_dim) * u
        return self.o_proj(y.flatten(1).to(x_t.dtype)), {"re": h.real, "im": h.imag}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        y, h = self._parallel(x, padding_mask)
        return self.o_proj(y.to(x.dtype)), {"re": h.real.contiguous(), "im": h.imag.contiguous()}
