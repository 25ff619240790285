"""S4D: a diagonal complex state-space model without selectivity, i.e. a learned long convolution.

Gu, Gupta, Goel & Ré, "On the Parameterization and Initialization of Diagonal State Space Models"
(NeurIPS 2022).

"The student without selectivity": every value channel c runs a fixed (input-independent) linear
recurrence over N/2 complex modes n,

    h_t = Abar h_(t-1) + Bbar u_t,   y_t = 2 Re(C h_t) + D u_t,

the zero-order-hold discretisation of x' = A x + B u with step Delta_c:
``Abar = exp(Delta A)``, ``Bbar = (Abar - 1) / A * B``. Unrolled, it is a causal convolution with

    K_c(tau) = 2 Re sum_n C_cn Bbar_cn Abar_cn^tau   (tau >= 0; the conjugate modes give the factor 2)

built over physical lags (the same parameters mean the same filter at every length) and applied by
a zero-padded FFT; the naive reference runs the recurrence token by token, and so does decoding
(the complex modes, N real numbers per channel, O(N) per token).

Every parameter is real: log(-Re A), Im A, Re C, Im C, log Delta, D; complex numbers exist only
inside forward (optimisers and collectives do not all handle complex parameters).
Init is S4D-Lin: A_n = -1/2 + i pi n, B = 1, log Delta ~ U[log dt_min, log dt_max].

Layout: ``out = o_proj(ssm(v_proj(x)))`` with v/o copyable from a teacher (KV heads repeated for GQA).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State, WaveMixer
from .functional import causal_conv, complex_expm1
from .registry import register_mixer


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def check_modes(mixer: str, state_dim: int, dt_min: float, dt_max: float) -> None:
    """An S4D-family state: an even number of reals (state_dim / 2 complex modes), steps 0 < dt_min <= dt_max."""
    if state_dim < 2 or state_dim % 2:
        raise MixerValueError(f"{mixer} state_dim must be even and >= 2 (state_dim / 2 complex modes), got {state_dim}")
    if not 0 < dt_min <= dt_max:
        raise MixerValueError(f"{mixer} needs 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


@register_mixer("s4d")
class S4D(WaveMixer):
    """Args:
        d_model: model width D.
        state_dim: real state size N per channel, i.e. N/2 complex modes (default 64; even, >= 2).
        dt_min, dt_max: range of the initial step Delta (log-uniform per channel).
        n_heads, n_kv_heads, head_dim, bias: projection geometry.
    """

    def __init__(self, d_model: int, *, state_dim: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 n_heads: int | None = None, n_kv_heads: int | None = None, head_dim: int | None = None,
                 bias: bool = False, causal: bool = True) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        self.causal_only("a causal recurrence")
        check_modes(self.name, state_dim, dt_min, dt_max)
        self.state_dim = state_dim
        self.add_value_projections()
        C, n = self.inner_dim, state_dim // 2
        # S4D-Lin: A_n = -1/2 + i pi n. Decays and frequencies have no "zero" prior: no weight decay.
        self.log_neg_re_a = no_weight_decay(nn.Parameter(torch.full((C, n), math.log(0.5))))  # (C, n)
        self.im_a = no_weight_decay(nn.Parameter(math.pi * torch.arange(n).float().repeat(C, 1)))  # (C, n)
        log_dt = torch.rand(C) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = no_weight_decay(nn.Parameter(log_dt))  # (C,)
        # The teacher init copies v/o, and attention is a convex average of past values, so the mixer
        # starts as one: mode 0 (A = -1/2, real) with C = 1/4 has K(tau) = (1 - Abar) Abar^tau, a
        # unit-gain EMA over ~2/Delta tokens (20..2000 at the default dt range). The other modes get
        # complex-normal C with std 1/(4 sqrt(N)): together about a quarter of the EMA's output energy,
        # enough for Im A and Delta to receive gradients, too little to swamp the average. C is exempt
        # from weight decay, which would erase that average.
        c = torch.randn(C, n, dtype=torch.cfloat) / (4 * math.sqrt(state_dim))
        c[:, 0] += 0.25
        self.c_re = no_weight_decay(nn.Parameter(c.real.clone()))  # (C, n)
        self.c_im = no_weight_decay(nn.Parameter(c.imag.clone()))  # (C, n)
        # Skip D starts at 0: D = 1 would add o_proj(v_t) at full weight, which the teacher does not
        # do (it is the output of a head attending only to itself); 0 still gets a gradient.
        self.d_skip = nn.Parameter(torch.zeros(C))  # (C,)
        # Decays, frequencies and steps set phases that grow with the lag: a bf16 im_a of 31 pi is off by up to
        # 0.06 rad per step of warped time, so they stay float32 in bf16 models.
        self.keep_float32("log_neg_re_a", "im_a", "log_dt")
        self._step_cache = None  # (key, coefficients): see _step_coefficients

    state_form = "N/2 complex modes (re, im) per channel; O(N) per token"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, state_dim={self.state_dim}"

    def _continuous(self, dtype) -> tuple[Tensor, Tensor]:
        """(A, Delta * A), complex (C, n), in the complex dtype matching real ``dtype``."""
        a = torch.complex(-self.log_neg_re_a.to(dtype).exp(), self.im_a.to(dtype))
        return a, self.log_dt.to(dtype).exp()[:, None] * a

    def _discrete(self, dtype) -> tuple[Tensor, Tensor, Tensor]:
        """ZOH: (Delta A, Bbar, C), complex (C, n). Bbar = expm1(Delta A) / A, without cancellation."""
        a, dta = self._continuous(dtype)
        return dta, complex_expm1(dta) / a, torch.complex(self.c_re.to(dtype), self.c_im.to(dtype))

    @staticmethod
    def _powers(dta: Tensor, T: int) -> tuple[Tensor, Tensor, int]:
        """Abar^tau for tau = q S + s as (lo (C, n, S) = Abar^s, hi (C, n, Q) = Abar^(qS), S).

        A two-level Vandermonde: O(C n sqrt(T)) memory instead of O(C n T), each power still a
        direct exp(tau Delta A) (no accumulated products).
        """
        S = math.isqrt(max(T, 1) - 1) + 1  # ceil(sqrt(T))
        Q = -(-T // S)
        rdt = dta.real.dtype
        lo = torch.exp(dta[..., None] * torch.arange(S, device=dta.device, dtype=rdt))  # (C, n, S)
        hi = torch.exp(dta[..., None] * (S * torch.arange(Q, device=dta.device, dtype=rdt)))  # (C, n, Q)
        return lo, hi, S

    def kernel(self, T: int, dtype=torch.float32) -> Tensor:
        """K over lags 0..T-1 plus the skip D at lag 0; (C, T) in ``dtype``."""
        dta, bbar, c = self._discrete(dtype)
        lo, hi, S = self._powers(dta, T)
        k = ((c * bbar)[..., None] * hi).transpose(1, 2) @ lo  # (C, Q, S): sum_n C Bbar Abar^(qS + s)
        k = 2 * k.real.reshape(k.shape[0], -1)[:, :T]  # (C, T)
        return torch.cat([k[:, :1] + self.d_skip.to(dtype)[:, None], k[:, 1:]], dim=1)

    def mixing_matrix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        """Per channel (B, C, T, T): the Toeplitz matrix M_c[t, s] = K_c(t - s) of the kernel without the skip D
        (the same for every input), zero at pad keys, whose values are zero."""
        T = x.shape[1]
        ct = torch.promote_types(x.dtype, torch.float32)
        k = self.kernel(T, ct)
        k = torch.cat([k[:, :1] - self.d_skip.to(ct)[:, None], k[:, 1:]], dim=1)  # (C, T)
        lag = torch.arange(T, device=x.device)[:, None] - torch.arange(T, device=x.device)[None, :]  # t - s
        m = (k[:, lag.clamp_min(0)] * (lag >= 0))[None].expand(x.shape[0], -1, -1, -1)  # (B, C, T, T)
        return m if padding_mask is None else m * padding_mask[:, None, None, :].to(ct)

    def _values(self, x: Tensor, padding_mask) -> Tensor:
        return self.zero_pads(self.v_proj(x), padding_mask)  # (B, T, C)

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        u = self._values(x, padding_mask)
        ct = torch.promote_types(x.dtype, torch.float32)
        return self.o_proj(causal_conv(u, self.kernel(x.shape[1], ct)).to(x.dtype))

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        """The recurrence token by token, with Abar = exp(Delta A) and Bbar = (Abar - 1) / A written out."""
        u = self._values(x, padding_mask)
        ct = torch.promote_types(x.dtype, torch.float32)
        a, dta = self._continuous(ct)
        abar = torch.exp(dta)
        bbar = (abar - 1) / a
        c = torch.complex(self.c_re.to(ct), self.c_im.to(ct))
        h = torch.zeros(x.shape[0], *a.shape, dtype=a.dtype, device=x.device)  # (B, C, n)
        ys = []
        for t in range(x.shape[1]):
            ut = u[:, t].to(ct)  # (B, C)
            h = abar * h + bbar * ut[..., None]
            ys.append(2 * (c * h).real.sum(-1) + self.d_skip.to(ct) * ut)
        return self.o_proj(torch.stack(ys, dim=1).to(x.dtype))

    def _init_state(self, batch: int, device, dtype) -> State:
        shape = (batch, self.inner_dim, self.state_dim // 2)
        return {part: torch.zeros(shape, device=device, dtype=dtype) for part in ("re", "im")}

    def _step_coefficients(self, dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(Abar, Bbar, 2 C, D) for one step. Without autograd (decoding) they are computed once and reused
        until a parameter changes (``_version``): otherwise the ~15 small kernels of the discretisation
        would cost more per token than the recurrence itself."""
        params = (self.log_neg_re_a, self.im_a, self.log_dt, self.c_re, self.c_im, self.d_skip)
        key = (dtype, self.log_dt.device, tuple(p._version for p in params), tuple(p.data_ptr() for p in params))
        if not torch.is_grad_enabled() and self._step_cache is not None and self._step_cache[0] == key:
            return self._step_cache[1]
        dta, bbar, c = self._discrete(dtype)
        coefficients = (torch.exp(dta), bbar, 2 * c, self.d_skip.to(dtype))
        self._step_cache = None if torch.is_grad_enabled() else (key, coefficients)
        return coefficients

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        u = self.v_proj(x_t)  # (B, C)
        if padding_mask is not None:
            u = torch.where(padding_mask[:, None], u, torch.zeros((), dtype=u.dtype, device=u.device))
        ct = state["re"].dtype
        abar, bbar, c2, d = self._step_coefficients(ct)
        u = u.to(ct)
        h = abar * torch.complex(state["re"], state["im"]) + bbar * u[..., None]  # (B, C, n)
        y = (c2 * h).real.sum(-1) + d * u  # (B, C)
        return self.o_proj(y.to(x_t.dtype)), {"re": h.real, "im": h.imag}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        y = self.mix(x, padding_mask)
        u = self._values(x, padding_mask)
        ct = torch.promote_types(x.dtype, torch.float32)
        B, T, C = u.shape
        dta, bbar, _ = self._discrete(ct)
        lo, hi, S = self._powers(dta, T)
        # h_T = Bbar sum_tau Abar^tau u_(T-1-tau), with tau = q S + s.
        rev = nn.functional.pad(u.to(ct).flip(1), (0, 0, 0, hi.shape[-1] * S - T))  # (B, Q*S, C)
        rev = rev.view(B, -1, S, C).to(lo.dtype)  # (B, Q, S, C)
        inner = torch.einsum("bqsc,cns->bcnq", rev, lo)  # (B, C, n, Q)
        h = bbar * (inner * hi).sum(-1)  # (B, C, n)
        return y, {"re": h.real.contiguous(), "im": h.imag.contiguous()}
