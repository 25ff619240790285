"""The chunked decayed linear attention (hand-written backward) against the token-by-token recurrence."""

import pytest
import torch

from wavedistill.mixers.scan import (chunk_state_recurrence, decayed_linear_attention, decayed_linear_attention_naive,
                                     decayed_linear_attention_step)


def inputs(T, B=2, H=3, Fd=5, dv=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(B, H, T, Fd, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, T, dv, generator=g, dtype=torch.float64)
    log_decay = -torch.rand(B, H, T, generator=g, dtype=torch.float64)
    state = torch.randn(B, H, Fd, dv, generator=g, dtype=torch.float64)
    return q, k, v, log_decay, state


def recurrent(q, k, v, log_decay, state):
    outs = []
    for t in range(q.shape[2]):
        o, state = decayed_linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], log_decay[:, :, t], state)
        outs.append(o)
    return torch.stack(outs, dim=2), state


@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (8, 4), (13, 5), (16, 64)])
def test_chunked_outputs_final_state_and_all_gradients_equal_the_recurrence(T, chunk):
    # Every input gets a gradient, the initial state and the final state's included: the backward
    # is written by hand, so each path (intra-chunk, across chunks, decay identity) is checked here.
    args = [t.requires_grad_() for t in inputs(T)]
    o, S = decayed_linear_attention(*args[:4], chunk=chunk, state=args[4])
    o_ref, S_ref = recurrent(*args)
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(S, S_ref, atol=1e-10, rtol=1e-10)
    g = torch.Generator().manual_seed(1)
    co, cS = torch.randn(o.shape, generator=g, dtype=o.dtype), torch.randn(S.shape, generator=g, dtype=S.dtype)
    fast = torch.autograd.grad((o * co).sum() + (S * cS).sum(), args)
    ref = torch.autograd.grad((o_ref * co).sum() + (S_ref * cS).sum(), args)
    for name, a, b in zip(("q", "k", "v", "log_decay", "state"), fast, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda s, n=name: f"grad of {n}: {s}")


def test_chunked_equals_the_dense_reference_from_a_zero_state():
    q, k, v, log_decay, _ = inputs(19)
    o, _ = decayed_linear_attention(q, k, v, log_decay, chunk=8)
    torch.testing.assert_close(o, decayed_linear_attention_naive(q, k, v, log_decay), atol=1e-10, rtol=1e-10)


def test_backward_passes_torch_gradcheck():
    args = [t[:1, :1].clone().requires_grad_() for t in inputs(6, Fd=2, dv=2)]
    assert torch.autograd.gradcheck(lambda *a: decayed_linear_attention(*a[:4], chunk=4, state=a[4]), args)


def test_chunk_below_one_is_refused():
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        decayed_linear_attention(*inputs(4)[:4], chunk=0)


def test_chunk_state_recurrence_and_its_gradients_equal_a_loop_under_autograd():
    g = torch.Generator().manual_seed(2)
    B, H, n, dk, dv = 2, 3, 5, 4, 3
    M = (0.5 * torch.randn(B, H, n, dk, dk, generator=g, dtype=torch.float64)).requires_grad_()
    X = torch.randn(B, H, n, dk, dv, generator=g, dtype=torch.float64).requires_grad_()
    S0 = torch.randn(B, H, dk, dv, generator=g, dtype=torch.float64).requires_grad_()
    before, final = chunk_state_recurrence(M, X, S0)
    S, ref = S0, []
    for c in range(n):
        ref.append(S)
        S = M[:, :, c] @ S + X[:, :, c]
    ref = torch.stack(ref, dim=2)
    torch.testing.assert_close(before, ref)
    torch.testing.assert_close(final, S)
    cb, cf = torch.randn(ref.shape, generator=g, dtype=ref.dtype), torch.randn(S.shape, generator=g, dtype=S.dtype)
    fast = torch.autograd.grad((before * cb).sum() + (final * cf).sum(), (M, X, S0))
    slow = torch.autograd.grad((ref * cb).sum() + (S * cf).sum(), (M, X, S0))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert torch.autograd.gradcheck(chunk_state_recurrence, (M[:1, :1, :3, :2, :2].detach().requires_grad_(),
                                                             X[:1, :1, :3, :2].detach().requires_grad_(),
                                                             S0[:1, :1, :2].detach().requires_grad_()))


def test_a_bf16_autocast_does_not_round_the_scan():
    # The mixers hand the scan float32 features; an autocast region around the model must not turn its
    # matmuls into bf16 ones (in forward only: backward runs outside autocast).
    q, k, v, log_decay, state = (t.float() for t in inputs(40))
    ref, ref_S = decayed_linear_attention(q, k, v, log_decay, chunk=16, state=state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, S = decayed_linear_attention(q, k, v, log_decay, chunk=16, state=state)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o, ref, atol=0, rtol=0)
    torch.testing.assert_close(S, ref_S, atol=0, rtol=0)
