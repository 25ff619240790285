"""Phase attention: softmax attention whose score is how well the *waves* of a query and a key line up.

Q, K and V are the teacher's (copied through :class:`QKVMixer`), but the dot product q_t . k_s is
replaced by a phase-alignment score between the spectra of q and k over the head axis:

    Q^ = rfft(q, dim=head_dim)   (F = head_dim // 2 + 1 bins; K^ likewise)
    score(t, s) = scale * sum_f w[h, f] * Re(Q^_tf conj(K^_sf)) / (|Q^_tf| |K^_sf|)
                = scale * sum_f w[h, f] * cos(phase(Q^_tf) - phase(K^_sf))

with learned per-head, per-frequency weights w; softmax over the causal keys (optionally only the
last ``window``), then a weighted sum of v and o_proj. Not softmax-free: it is reported with the hybrids.

Parseval links it to the teacher: q . k = (1/hd) sum_f c_f |Q^_f| |K^_f| cos(dphi_f) with c_f = 1 for
the real bins (DC, and Nyquist when hd is even) and 2 otherwise. Phase attention drops the magnitudes;
``w`` starts at c_f * hd, i.e. every magnitude replaced by its typical size sqrt(hd) for unit-variance
q, k. Then, at the default scale 1/sqrt(hd), random phases give scores of std exactly 1 and perfect
alignment gives sqrt(hd): the spread of dot-product attention at init.

Fast path: unit phasors u = Q^ / |Q^| as real features [Re u (F), Im u (hd - F)] -- the imaginary parts
of the real bins are identically zero and are dropped, so the features have exactly hd dims -- with w
folded into the query side. The score is then a plain dot product: SDPA (full causal) or blocked
``local_attention`` (window), and decoding keeps key *features* + values in the QKVMixer memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import no_weight_decay
from ..errors import MixerValueError
from .base import State
from .functional import fft_dtype, local_attention, local_causal_mask
from .qkv import QKVMixer
from .registry import register_mixer

# Magnitude floor: u = Q^ / sqrt(|Q^|^2 + EPS^2). Smooth at Q^ = 0 (a zeroed pad query gives u = 0, not
# NaN) and negligible for real bins, whose magnitude is O(sqrt(hd)).
EPS = 1e-4


@register_mixer("phase_attention")
class PhaseAttention(QKVMixer):
    """Args:
        d_model: model width D.
        window: keys each query attends to, itself included (default None = all causal keys).
        qk_norm: RMS-normalise q and k per head (Qwen3 / Gemma3 style).
        rope: rotate q and k before the FFT (default True); rope_theta: rotary base used when no
            teacher tables are passed.
        n_heads, n_kv_heads, head_dim (>= 2), bias: attention geometry.
    """

    state_form = "key features + values of the last `window` tokens (all when window is None); O(window) per token"

    def __init__(self, d_model: int, *, window: int | None = None, qk_norm: bool = False, rope: bool = True,
                 rope_theta: float = 10000.0, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = False, causal: bool = True) -> None:
        super().__init__(d_model, qk_norm=qk_norm, rope=rope, rope_theta=rope_theta, n_heads=n_heads,
                         n_kv_heads=n_kv_heads, head_dim=head_dim, bias=bias, causal=causal)
        if not causal:
            raise MixerValueError("phase_attention is causal only (causal=False is not implemented)")
        if window is not None and window < 1:
            raise MixerValueError(f"phase_attention window must be >= 1 or None, got {window}")
        if self.head_dim < 2:
            raise MixerValueError(f"phase_attention needs head_dim >= 2 (one FFT bin has no phase), "
                                  f"got {self.head_dim}")
        self.window = None if window is None else int(window)
        hd = self.head_dim
        self.n_bins = hd // 2 + 1
        # Parseval weights c_f * hd: 1 for the real bins (DC; Nyquist when hd is even), 2 for the others.
        w = torch.full((self.n_heads, self.n_bins), 2.0)
        w[:, 0] = 1.0
        if hd % 2 == 0:
            w[:, -1] = 1.0
        # No weight decay: decay would flatten every head's attention towards uniform.
        self.freq_weight = no_weight_decay(nn.Parameter(w))  # (H, F)
        self.keep_float32("freq_weight")  # each frequency's weight on the phase differences: not rounded to bf16

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, bins={self.n_bins}"

    def phasors(self, x: Tensor) -> Tensor:
        """(B, H, T, hd) -> complex unit phasors (B, H, T, F) of rfft over the head axis, in >= float32."""
        z = torch.fft.rfft(x.to(fft_dtype(x)), dim=-1)
        return z * torch.rsqrt(z.real.square() + z.imag.square() + EPS ** 2)

    def features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Real (B, H, T, hd) query / key features whose dot product is sum_f w_f cos(dphi_f)."""
        n_im = self.head_dim - self.n_bins  # bins 1 .. n_im have an imaginary part; the real bins do not
        w = self.freq_weight.to(fft_dtype(q))[None, :, None]  # (1, H, 1, F)
        uq, uk = self.phasors(q), self.phasors(k)
        qf = torch.cat([w * uq.real, (w * uq.imag)[..., 1:1 + n_im]], dim=-1)
        kf = torch.cat([uk.real, uk.imag[..., 1:1 + n_im]], dim=-1)
        return qf, kf

    def _attend(self, qf: Tensor, kf: Tensor, v: Tensor, padding_mask) -> Tensor:
        scale = self.scaling.item()
        if self.window is not None:
            return local_attention(qf, kf, v, self.window, padding_mask, scale)
        T = qf.shape[2]
        mask = None if padding_mask is None else local_causal_mask(T, T, padding_mask, qf.device)
        return F.scaled_dot_product_attention(qf, kf, v, attn_mask=mask, is_causal=mask is None, scale=scale)

    def _mix(self, x: Tensor, padding_mask, position_embeddings, with_state: bool = False):
        B, T, _ = x.shape
        q, k, v = self.qkv(x, position_embeddings, padding_mask)  # (B, H, T, hd), KV heads repeated
        qf, kf = self.features(q, k)  # (B, H, T, hd) in >= float32
        v = v.to(qf.dtype)
        y = self._attend(qf, kf, v, padding_mask).transpose(1, 2).reshape(B, T, self.inner_dim)
        y = self.o_proj(y.to(x.dtype))
        if not with_state:
            return y
        return y, self.kv_final(kf, v, padding_mask, self.window, qf.dtype)

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, position_embeddings)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        """Explicit per-pair complex score and masked softmax; O(T^2 F) memory."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x, position_embeddings, padding_mask)
        Q = torch.fft.rfft(q.to(fft_dtype(q)), dim=-1)  # (B, H, T, F)
        K = torch.fft.rfft(k.to(fft_dtype(k)), dim=-1)
        nq = (Q.abs().square() + EPS ** 2).sqrt()  # same magnitude floor as the fast path
        nk = (K.abs().square() + EPS ** 2).sqrt()
        cos = (Q[:, :, :, None] * K[:, :, None].conj()).real / (nq[:, :, :, None] * nk[:, :, None])  # (B,H,T,T,F)
        w = self.freq_weight.to(cos.dtype)[None, :, None, None]  # (1, H, 1, 1, F)
        scores = self.scaling.item() * (w * cos).sum(-1)  # (B, H, T, T)
        mask = local_causal_mask(T, T if self.window is None else self.window, padding_mask, x.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        y = torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v.to(scores.dtype))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.inner_dim).to(x.dtype))

    def _init_state(self, batch: int, device, dtype) -> State:
        # Key features have hd dims, so the QKVMixer memory (B, H, slots, hd) holds them as it is.
        return self.kv_state(batch, device, dtype, slots=self.window or 0)

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        q, k, v = self.step_qkv(x_t, state, position_embeddings)  # (B, H, 1, hd)
        qf, kf = self.features(q, k)
        # kv_attend scores q . k * self.scaling: with w folded into qf this is the phase score.
        y, memory = self.kv_attend(qf, kf, v, state, padding_mask, window=self.window)  # (B, H, hd)
        return self.o_proj(y.reshape(x_t.shape[0], self.inner_dim).to(x_t.dtype)), {**state, **memory}

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        return self._mix(x, padding_mask, position_embeddings, with_state=True)
