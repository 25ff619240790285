"""Wave-Density Attention (WDA), made causal: a per-token mixture of learned damped-wave masks over the lag.

The idea (community model H0ARK/wave-density-130m and its code H0ARK/wave-density-attention; no
paper): instead of a softmax over q.k scores, each head holds M learned "wave" masks over the lag
tau = t - s and a router picks how much of each mask to use. The original routed with a mean over
the whole sequence, which lets every token see the future. Here the router reads token t only:

    mask_hm(tau) = sum_j a_hmj (1 - rho_hmj) rho_hmj^tau cos(omega_hmj tau + phi_hmj),   tau >= 0
    pi_h(t)      = softmax_m(W_r x_t + b_r)                                                (per head)
    y_t          = o_proj( sum_m pi_hm(t) (mask_hm * v)_t ),    v = v_proj(x)  (teacher-copyable)

Masks are per head (H, M, J parameters): heads specialise like attention heads, at negligible cost.
A damped cosine is the real part of a complex exponential, ``rho^tau cos(w tau + phi) =
Re(e^(i phi) (rho e^(i w))^tau)``, so each mask is an exact IIR filter (a sum of damped resonators;
cf. S4D, Gu et al. 2022, and LRU, Orvieto et al. 2023): training convolves v with the M masks by a
zero-padded FFT over physical lags (v transformed once, each head's masks once), decoding keeps one complex
value per (channel, mask, component),
``z <- rho e^(i w) z + v_t``, and reads ``y_t = sum_m pi_m(t) sum_j a (1 - rho) Re(e^(i phi) z)``.

Parameters are real: rho = sigmoid(.), omega = pi sigmoid(.) in (0, pi), amplitudes a, phases phi.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State, WaveMixer
from .functional import causal_conv_last, causal_conv_naive
from .registry import register_mixer


@register_mixer("wda")
class WDA(WaveMixer):
    """Args:
        d_model: model width D.
        n_masks: masks M per head that the router mixes (default 4).
        n_components: damped sinusoids J per mask (default 4).
        n_heads, n_kv_heads, head_dim, bias: projection geometry.
    """

    def __init__(self, d_model: int, *, n_masks: int = 4, n_components: int = 4, n_heads: int | None = None,
                 n_kv_heads: int | None = None, head_dim: int | None = None, bias: bool = False,
                 causal: bool = True) -> None:
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal,
                         bias=bias)
        self.causal_only("a causal per-token mixture of causal filters")
        for arg, value in (("n_masks", n_masks), ("n_components", n_components)):
            if value < 1:
                raise MixerValueError(f"wda {arg} must be >= 1, got {value}")
        self.n_masks, self.n_components = n_masks, n_components
        self.add_value_projections()
        H, M, J = self.n_heads, n_masks, n_components
        # Mask m averages over tau_m tokens, tau_m log-spaced from 2 to 512 (rho = 1 - 1/tau_m), so the
        # router chooses between time scales from the start. Component 0 is that average (a = 1,
        # omega = 0.1 / tau_m: under 0.1 rad of phase drift over the window, so ~ a unit-gain EMA,
        # which is what attention with the teacher's v/o roughly is); components j >= 1 are weaker
        # resonances (a = 0.1) at omega = pi j / J, so their frequencies and decays get gradients.
        tau = torch.logspace(math.log10(2.0), math.log10(512.0), M) if M > 1 else torch.tensor([8.0])
        rho = (1 - 1 / tau)[:, None].expand(M, J)
        omega = torch.cat([0.1 / tau[:, None], (math.pi * torch.arange(1, J) / J).expand(M, J - 1)], dim=1)
        amp = torch.cat([torch.ones(M, 1), torch.full((M, J - 1), 0.1)], dim=1)
        # Decays, frequencies, phases and amplitudes have no "zero" prior: exempt from weight decay.
        self.rho_logit = no_weight_decay(nn.Parameter(torch.logit(rho).repeat(H, 1, 1)))  # (H, M, J)
        self.omega_logit = no_weight_decay(nn.Parameter(torch.logit(omega / math.pi).repeat(H, 1, 1)))  # (H, M, J)
        self.amp = no_weight_decay(nn.Parameter(amp.repeat(H, 1, 1)))  # (H, M, J)
        self.phase = no_weight_decay(nn.Parameter(torch.zeros(H, M, J)))  # (H, M, J)
        # The masks' decays, frequencies and phases set values at every lag: float32 in bf16 models.
        self.keep_float32("rho_logit", "omega_logit", "phase")
        # Router: small random weights (logit std ~0.5 for unit-scale inputs), so the mixture differs
        # between tokens and masks at init and every router weight gets a gradient (zero weights would
        # give all tokens the same uniform mixture). With one mask there is nothing to route (pi = 1),
        # and a router would be a parameter that never gets a gradient.
        self.router = nn.Linear(d_model, H * M, bias=True) if M > 1 else None
        if self.router is not None:
            nn.init.normal_(self.router.weight, std=0.5 / math.sqrt(d_model))
            nn.init.zeros_(self.router.bias)

    state_form = "n_masks x n_components complex resonator values (re, im) per channel; O(M J) per token"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_masks={self.n_masks}, n_components={self.n_components}"

    def _waves(self, dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log rho, omega, gain = a (1 - rho), phi), each (H, M, J) in ``dtype``."""
        r = self.rho_logit.to(dtype)
        log_rho = nn.functional.logsigmoid(r)
        gain = self.amp.to(dtype) * torch.sigmoid(-r)  # a (1 - rho), without the cancellation of 1 - sigmoid
        return log_rho, math.pi * torch.sigmoid(self.omega_logit.to(dtype)), gain, self.phase.to(dtype)

    def masks(self, T: int, dtype=torch.float32) -> Tensor:
        """The masks over lags 0..T-1; (H, M, T)."""
        log_rho, omega, gain, phi = self._waves(dtype)
        lag = torch.arange(T, device=log_rho.device, dtype=dtype)
        # exp(tau log rho) rather than rho^tau: the same numbers, and stable gradients at rho -> 0.
        w = gain[..., None] * torch.exp(log_rho[..., None] * lag) * torch.cos(omega[..., None] * lag + phi[..., None])
        return w.sum(2)  # (H, M, T)

    def mixture_weights(self, x: Tensor) -> Tensor:
        """pi: (B, T, H, M), a softmax over masks computed from each token alone (causal by construction)."""
        ct = torch.promote_types(x.dtype, torch.float32)
        if self.router is None:
            return torch.ones(*x.shape[:-1], self.n_heads, 1, dtype=ct, device=x.device)
        logits = self.router(x).view(*x.shape[:-1], self.n_heads, self.n_masks)
        return torch.softmax(logits.to(ct), dim=-1)

    def _filtered(self, v: Tensor) -> Tensor:
        """Every mask applied to v (B, T, C) -> (B, M, H, hd, T). The masks are per head, so v is transformed once
        and each (head, mask) kernel once, instead of M copies of v against hd copies of each kernel."""
        B, T, _ = v.shape
        masks = self.masks(T, v.dtype).transpose(0, 1)[:, :, None]  # (M, H, 1, T)
        return causal_conv_last(v.transpose(1, 2).reshape(B, 1, self.n_heads, self.head_dim, T), masks)

    def _filtered_naive(self, v: Tensor) -> Tensor:
        """Reference for :meth:`_filtered`: each channel against its head's M masks by an explicit Toeplitz product."""
        B, T, _ = v.shape
        H, M, hd = self.n_heads, self.n_masks, self.head_dim
        k = self.masks(T, v.dtype).transpose(0, 1).repeat_interleave(hd, dim=1).reshape(M * self.inner_dim, T)
        return causal_conv_naive(v.repeat(1, 1, M), k).view(B, T, M, H, hd).permute(0, 2, 3, 4, 1)

    def _mix(self, x: Tensor, padding_mask, naive: bool) -> Tensor:
        B, T, _ = x.shape
        ct = torch.promote_types(x.dtype, torch.float32)
        v = self.zero_pads(self.v_proj(x), padding_mask).to(ct)  # (B, T, C)
        ym = self._filtered_naive(v) if naive else self._filtered(v)  # (B, M, H, hd, T)
        pi = self.mixture_weights(x).permute(0, 3, 2, 1)[:, :, :, None]  # (B, M, H, 1, T)
        y = (pi * ym).sum(1).reshape(B, self.inner_dim, T).transpose(1, 2)  # (B, T, C)
        return self.o_proj(y.to(x.dtype))

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, naive=False)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, naive=True)

    def _per_channel(self, t: Tensor) -> Tensor:
        return t.repeat_interleave(self.head_dim, dim=0)  # (H, M, J) -> (C, M, J)

    def _init_state(self, batch: int, device, dtype) -> State:
        shape = (batch, self.inner_dim, self.n_masks, self.n_components)
        return {part: torch.zeros(shape, device=device, dtype=dtype) for part in ("re", "im")}

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        ct = state["re"].dtype
        v = self.v_proj(x_t)  # (B, C)
        if padding_mask is not None:
            v = torch.where(padding_mask[:, None], v, torch.zeros((), dtype=v.dtype, device=v.device))
        v = v.to(ct)[..., None, None]  # (B, C, 1, 1)
        log_rho, omega, gain, phi = (self._per_channel(t) for t in self._waves(ct))  # each (C, M, J)
        lr, li = torch.exp(log_rho) * torch.cos(omega), torch.exp(log_rho) * torch.sin(omega)  # rho e^(i w)
        re = lr * state["re"] - li * state["im"] + v  # (B, C, M, J)
        im = lr * state["im"] + li * state["re"]
        out = (gain * (torch.cos(phi) * re - torch.sin(phi) * im)).sum(-1)  # (B, C, M): each mask's filter output
        pi = self.mixture_weights(x_t).to(ct)  # (B, H, M)
        y = (out.view(-1, self.n_heads, self.head_dim, self.n_masks) * pi[:, :, None]).sum(-1)  # (B, H, hd)
        return self.o_proj(y.reshape(x_t.shape[0], -1).to(x_t.dtype)), {"re": re, "im": im}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        y = self.mix(x, padding_mask)
        B, T, _ = x.shape
        ct = torch.promote_types(x.dtype, torch.float32)
        v = self.zero_pads(self.v_proj(x), padding_mask).to(ct).flip(1).view(B, T, self.n_heads, self.head_dim)
        log_rho, omega, _, _ = self._waves(ct)
        lag = torch.arange(T, device=x.device, dtype=ct)
        # z_T = sum_tau (rho e^(i w))^tau v_(T-1-tau): weights (H, M, J, T) against the reversed values.
        mag = torch.exp(log_rho[..., None] * lag)
        ang = omega[..., None] * lag
        re = torch.einsum("bthd,hmjt->bhdmj", v, mag * torch.cos(ang)).reshape(B, self.inner_dim, *log_rho.shape[1:])
        im = torch.einsum("bthd,hmjt->bhdmj", v, mag * torch.sin(ang)).reshape(B, self.inner_dim, *log_rho.shape[1:])
        return y, {"re": re, "im": im}
