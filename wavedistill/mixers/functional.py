"""Shared causal sequence operations, each with a naive reference beside the fast path.

All FFT work runs in float32 (or float64 when the input is float64): ``rfft`` rejects bf16/fp16
on CPU and half precision loses too much of a long convolution.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def fft_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def causal_conv(u: Tensor, k: Tensor) -> Tensor:
    """Causal long convolution ``y[:, t, c] = sum_{s <= t} k[c, t - s] * u[:, s, c]`` via FFT.

    Zero-padding to ``n >= 2T`` makes the FFT product a *linear* convolution; without it the
    product is circular and position t would see tokens after t.

    Args:
        u: (B, T, C) input.
        k: (C, L) kernel over physical lags 0..L-1. Lags >= L are zero; lags >= T are unused.
    """
    T = u.shape[1]
    ct = fft_dtype(u)
    # Time-contiguous (B, C, T): an FFT along a strided axis costs ~1.6x in forward + backward at 8K tokens.
    y = causal_conv_last(u.to(ct).transpose(1, 2).contiguous(), k[:, :T].to(ct))  # (B, C, T)
    return y.transpose(1, 2).to(u.dtype)


def causal_conv_last(u: Tensor, k: Tensor) -> Tensor:
    """:func:`causal_conv` along the last axis: u (..., T) and kernels k (..., L), broadcast against each other
    (a kernel shared by channels is transformed once) -> (..., T). One zero-padded FFT of length n >= 2T - 1."""
    T = u.shape[-1]
    n = 1 << (2 * T - 1).bit_length()  # power of two >= 2T - 1
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :T]


def complex_expm1(z: Tensor) -> Tensor:
    """exp(z) - 1 for complex z without the cancellation of ``exp(z) - 1`` when |z| << 1.

    exp(x + iy) - 1 = expm1(x) cos y - 2 sin^2(y / 2) + i e^x sin y.
    """
    x, y = z.real, z.imag
    return torch.complex(torch.expm1(x) * torch.cos(y) - 2 * torch.sin(y / 2) ** 2, torch.exp(x) * torch.sin(y))


def ema_basis(decays: Tensor, length: int, dtype: torch.dtype) -> Tensor:
    """Impulse responses of exponential moving averages, ``(1 - l) l^tau`` for tau < length; (n, length).

    Built in float64 so that slow decays (l close to 1) raised to long lags keep their precision.
    """
    lag = torch.arange(length, device=decays.device, dtype=torch.float64)
    d = decays.double()[:, None]
    return ((1 - d) * d ** lag[None]).to(dtype)


def ema_final_state(u: Tensor, decays: Tensor) -> Tensor:
    """State of each EMA ``h <- l h + (1 - l) u_t`` after the whole of u (B, T, C), from zero; (B, C, n).

    The closed form ``h_T = sum_s (1 - l) l^(T-1-s) u_s`` is the EMA's impulse response read
    backwards, which is how a parallel prefill hands its state to step-by-step decoding.
    """
    T = u.shape[1]
    ct = fft_dtype(u)
    weights = ema_basis(decays, T, ct).flip(-1)  # (n, T): weight of u_s in the final state
    return torch.einsum("btc,nt->bcn", u.to(ct), weights)


def ema_step(h: Tensor, u_t: Tensor, decays: Tensor) -> Tensor:
    """One EMA step for every channel and decay: h (B, C, n), u_t (B, C) -> (B, C, n)."""
    d = decays.to(h.dtype)
    return d * h + (1 - d) * u_t.to(h.dtype)[..., None]


def causal_conv_naive(u: Tensor, k: Tensor) -> Tensor:
    """Reference for :func:`causal_conv`: an explicit lower-triangular Toeplitz product."""
    T = u.shape[1]
    C, L = k.shape
    kt = torch.zeros(C, T, dtype=k.dtype, device=k.device)
    kt[:, : min(L, T)] = k[:, :T]
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T), t - s
    toeplitz = torch.where(lag >= 0, kt[:, lag.clamp(min=0)], 0.0)  # (C, T, T)
    return torch.einsum("cts,bsc->btc", toeplitz.to(u.dtype), u)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding as Hugging Face Llama applies it; x (B, H, T, hd), cos/sin (B, T, hd)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def rope_tables(T: int, head_dim: int, theta: float, device, dtype) -> tuple[Tensor, Tensor]:
    """(cos, sin) of shape (1, T, head_dim) in the Hugging Face layout (frequencies repeated twice)."""
    return rope_at(torch.arange(T, device=device)[None], head_dim, theta, dtype)


@functools.lru_cache(maxsize=16)
def _rope_inv_freq(head_dim: int, theta: float, device: torch.device) -> Tensor:
    """theta^(-2i / head_dim), float64 (head_dim / 2,); cached: decoding asks for it at every token.
    Built outside inference mode so that the cached tensor is usable in any later context."""
    with torch.inference_mode(False):
        return 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)


def rope_at(positions: Tensor, head_dim: int, theta: float, dtype) -> tuple[Tensor, Tensor]:
    """(cos, sin) of shape (*positions.shape, head_dim) at integer ``positions``; angles in float64."""
    inv = _rope_inv_freq(head_dim, float(theta), positions.device)
    ang = positions.double()[..., None] * inv
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def local_causal_mask(T: int, window: int, padding_mask: Tensor | None, device) -> Tensor:
    """Boolean (B or 1, 1, T, T) mask: query t sees keys s with t - window < s <= t that are real tokens.

    A padded query keeps its own diagonal so that softmax never sees an all-masked row.
    """
    t = torch.arange(T, device=device)
    lag = t[:, None] - t[None, :]
    band = (lag >= 0) & (lag < window)  # (T, T)
    if padding_mask is None:
        return band[None, None]
    keep = band[None] & padding_mask[:, None, :]  # (B, T, T)
    keep = keep | torch.eye(T, dtype=torch.bool, device=device)[None]
    return keep[:, None]


def local_attention(q: Tensor, k: Tensor, v: Tensor, window: int, padding_mask: Tensor | None,
                    scale: float) -> Tensor:
    """Causal sliding-window softmax attention in O(T * window) memory.

    Queries are cut into blocks of ``S = min(window, T)``; block b attends to keys in blocks b-1
    and b, which covers every key within the window. Reference: dense attention with
    :func:`local_causal_mask`.

    Args:
        q, k, v: (B, H, T, hd).
        padding_mask: (B, T) bool, True = real token; padded keys are never attended to.
    """
    B, H, T, hd = q.shape
    S = min(window, T)
    nb = -(-T // S)
    extra = nb * S - T
    qb = F.pad(q, (0, 0, 0, extra)).view(B, H, nb, S, hd)
    # Prepend one block of zeros so block 0 also has a "previous" block, then take 2S-wide key windows.
    kb = F.pad(k, (0, 0, S, extra)).unfold(2, 2 * S, S).transpose(-1, -2)  # (B, H, nb, 2S, hd)
    vb = F.pad(v, (0, 0, S, extra)).unfold(2, 2 * S, S).transpose(-1, -2)
    i = torch.arange(S, device=q.device)
    j = torch.arange(2 * S, device=q.device)
    lag = i[:, None] + S - j[None, :]  # (S, 2S), query pos - key pos
    real = torch.ones(B, T, dtype=torch.bool, device=q.device) if padding_mask is None else padding_mask
    key_ok = F.pad(real, (S, extra), value=False).unfold(1, 2 * S, S)  # (B, nb, 2S)
    keep = (lag >= 0) & (lag < window)  # (S, 2S)
    keep = (keep[None, None] & key_ok[:, :, None, :]) | (lag == 0)[None, None]  # (B, nb, S, 2S)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=keep[:, None], scale=scale)
    return out.reshape(B, H, nb * S, hd)[:, :, :T]


def window_exp_sums(q: Tensor, k: Tensor, v: Tensor, window: int, padding_mask: Tensor | None,
                    scale: float, block: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """Unnormalised softmax sums over each query's last ``window`` keys (itself included).

    Returns ``num = sum_s exp(q.k_s * scale - c) v_s`` (B, H, T, dv), ``den = sum_s exp(q.k_s * scale - c)``
    and the stabiliser ``c`` (B, H, T), the largest score in the band, so that a caller can add other
    terms on the same scale (``exp(-c) * extra``) before normalising. Pad keys are never seen; a
    padded query keeps its own key so no band is empty. Memory O(T * (block + window)).

    Computed in blocks of ``block`` queries against the ``block + window - 1`` keys their bands can reach: one
    batched matmul per block instead of one tiny (1 x window) product per query, which spent most of its time
    materialising the unfolded keys (4x slower at 8K).

    Args:
        q, k: (B, H, T, hd); v: (B, H, T, dv); padding_mask: (B, T) bool, True = real token.
    """
    B, H, T, _ = q.shape
    W, C = window, min(block, T)
    n = -(-T // C)
    extra = n * C - T
    L = C + W - 1  # keys a block of queries can reach: W - 1 before its first query, up to its last
    qb = F.pad(q, (0, 0, 0, extra)).view(B, H, n, C, -1)
    kb = F.pad(k, (0, 0, W - 1, extra)).unfold(2, L, C)  # (B, H, n, hd, L)
    vb = F.pad(v, (0, 0, W - 1, extra)).unfold(2, L, C).transpose(-1, -2)  # (B, H, n, L, dv)
    real = torch.ones(B, T, dtype=torch.bool, device=q.device) if padding_mask is None else padding_mask
    key_ok = F.pad(real, (W - 1, extra), value=False).unfold(1, L, C)  # (B, n, L)
    j = torch.arange(C, device=q.device)[:, None]
    m = torch.arange(L, device=q.device)[None, :]
    band = (m >= j) & (m <= j + W - 1)  # (C, L): key m of the block is in query j's last W positions
    own = m == j + W - 1  # the query's own key: always in, so a padded query's band is never empty
    ok = band & (key_ok[:, :, None, :] | own)  # (B, n, C, L)
    scores = (qb @ kb) * scale  # (B, H, n, C, L)
    scores = scores.masked_fill(~ok[:, None], float("-inf"))
    c = scores.amax(-1)  # (B, H, n, C), finite: the own key is always in
    p = (scores - c[..., None]).exp()
    num = (p @ vb).reshape(B, H, n * C, -1)[:, :, :T]
    return num, p.sum(-1).reshape(B, H, n * C)[:, :, :T], c.reshape(B, H, n * C)[:, :, :T]
