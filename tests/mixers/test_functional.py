"""Shared sequence operations: the causal FFT convolution and the blocked sliding-window attention,
each against its explicit reference."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_causal
from wavedistill.mixers.functional import causal_conv, causal_conv_naive, local_attention, local_causal_mask

B, C = 2, 3


def _inputs(T: int, L: int):
    torch.manual_seed(42)
    u = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    k = torch.randn(C, L, dtype=torch.float64, requires_grad=True)
    return u, k


# T = 1 and 2 are the edge cases of the padding arithmetic (n = next power of two >= 2T - 1);
# 37 is not a power of two; 64 is one, where n = 2T exactly.
@pytest.mark.parametrize("T", [1, 2, 37, 64])
def test_fft_conv_matches_toeplitz_reference_forward_and_backward(T):
    u, k = _inputs(T, T + 3)  # a kernel longer than T: lags >= T must simply be ignored
    fast, naive = causal_conv(u, k), causal_conv_naive(u, k)
    torch.testing.assert_close(fast, naive, atol=1e-10, rtol=1e-10)
    cot = torch.randn(B, T, C, dtype=torch.float64)
    g_fast = torch.autograd.grad((fast * cot).sum(), (u, k))
    g_naive = torch.autograd.grad((naive * cot).sum(), (u, k))
    for name, a, b in zip(("u", "k"), g_fast, g_naive):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda s, name=name: f"grad of {name}: {s}")


def test_direct_sum_definition():
    # Pin the convention independently of the reference: y[t, c] = sum_{s <= t} k[c, t - s] u[s, c].
    u, k = _inputs(5, 5)
    y = causal_conv(u, k).detach()
    expect = torch.zeros_like(y)
    for t in range(5):
        for s in range(t + 1):
            expect[:, t] += k[:, t - s].detach() * u[:, s].detach()
    torch.testing.assert_close(y, expect, atol=1e-12, rtol=0)


def test_kernel_shorter_than_sequence_has_zero_lags_beyond_its_length():
    T, L = 37, 5
    u, k = _inputs(T, L)
    torch.testing.assert_close(causal_conv(u, k), causal_conv_naive(u, k), atol=1e-10, rtol=1e-10)
    # An impulse at s = 3 reaches outputs 3 .. 3 + L - 1 and nothing after (a finite impulse response).
    impulse = torch.zeros(1, T, C, dtype=torch.float64)
    impulse[0, 3] = 1.0
    with torch.no_grad():
        y = causal_conv(impulse, k)
        torch.testing.assert_close(y[0, 3: 3 + L], k.T, atol=1e-12, rtol=0)
        assert y[0, :3].abs().max() < 1e-12  # before the impulse: causality
        assert y[0, 3 + L:].abs().max() < 1e-12  # beyond the kernel: nothing


def test_circular_fft_conv_leaks_but_causal_conv_does_not():
    # Documents the defect that zero-padding prevents: without padding to >= 2T - 1 the FFT
    # product is a circular convolution, and y[t] picks up u[T - j] for lags wrapping around.
    T = 37
    u, k = _inputs(T, T)
    k = k.detach()

    def circular(x):
        return torch.fft.irfft(torch.fft.rfft(x, n=T, dim=1) * torch.fft.rfft(k, n=T, dim=-1).T, n=T, dim=1)

    with pytest.raises(AssertionError, match="causality violated"):
        assert_causal(circular, u.detach())
    assert_causal(lambda x: causal_conv(x, k), u.detach())


def _dense_local_attention(q, k, v, window, padding_mask, scale):
    mask = local_causal_mask(q.shape[2], window, padding_mask, q.device)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    return torch.einsum("bhts,bhsd->bhtd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)


# Windows: 1 (only itself), shorter than T and not dividing it, exactly T, longer than T.
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("window", [1, 5, 37, 50])
def test_blocked_local_attention_matches_dense_masked_softmax(window, padded):
    torch.manual_seed(42)
    T, H, hd = 37, 2, 4
    q, k, v = (torch.randn(B, H, T, hd, dtype=torch.float64) for _ in range(3))
    pad = None
    if padded:
        pad = torch.ones(B, T, dtype=torch.bool)
        pad[1, :6] = False
    out = local_attention(q, k, v, window, pad, 0.5)
    torch.testing.assert_close(out, _dense_local_attention(q, k, v, window, pad, 0.5), atol=1e-12, rtol=0)


@pytest.mark.parametrize("T,window", [(1, 4), (63, 16), (65, 16), (130, 70), (200, 1)])
def test_window_exp_sums_in_blocks_equal_the_dense_band(T, window):
    # blocks of 64 queries; windows longer than a block and lengths off the block grid included
    from wavedistill.mixers.functional import window_exp_sums

    torch.manual_seed(0)
    q, k = torch.randn(2, 3, T, 8, dtype=torch.float64), torch.randn(2, 3, T, 8, dtype=torch.float64)
    v = torch.randn(2, 3, T, 5, dtype=torch.float64)
    for mask in (None, torch.rand(2, T) > 0.3):
        num, den, c = window_exp_sums(q, k, v, window, mask, 0.3)
        t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
        real = torch.ones(2, T, dtype=torch.bool) if mask is None else mask
        ok = (s <= t) & (s > t - window) & (real[:, None, :] | (s == t))  # (B, T, T)
        scores = (q @ k.transpose(-1, -2) * 0.3).masked_fill(~ok[:, None], float("-inf"))
        assert torch.allclose(c, scores.amax(-1))
        p = (scores - scores.amax(-1, keepdim=True)).exp()
        assert torch.allclose(num, p @ v) and torch.allclose(den, p.sum(-1))
