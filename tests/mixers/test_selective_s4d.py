"""selective_s4d: long warped times keep their phase in float32; Delta gates what the state keeps."""

import torch

from wavedistill.mixers import build_mixer


def _mixer(**kw):
    torch.manual_seed(0)
    m = build_mixer("selective_s4d", 16, n_heads=2, state_dim=8, chunk=32, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def test_float32_fast_path_matches_float64_recurrence_over_a_long_warped_time():
    # Delta ~ 1 per token over 1,500 tokens: the phases omega * Lambda reach ~1e4 rad, where a float32
    # cumulative sum would be off by ~1e-3 rad; the fast path reduces them in float64.
    m = _mixer(dt_min=1.0, dt_max=1.0)
    x = torch.randn(1, 1500, 16)
    with torch.no_grad():
        fast = m(x)
        ref = m.double().forward_naive(x.double())
    gap = (fast.double() - ref).abs().max().item()
    assert gap < 1e-4 * ref.abs().max().item(), gap


def test_tokens_with_zero_step_leave_the_state_untouched():
    # With Delta = 0 a token is held out entirely: no decay, no turn, no input, as at a pad.
    m = _mixer().double()
    with torch.no_grad():
        m.dt_proj.weight.zero_()
        m.dt_proj.bias.fill_(-200.0)  # softplus(-200) ~ 1e-87
        x = torch.randn(2, 9, 16, dtype=torch.float64)
        _, state = m.prefill(x)
    assert max(state["re"].abs().max().item(), state["im"].abs().max().item()) < 1e-80


def test_the_filter_depends_on_the_input_unlike_s4d():
    # Scaling an earlier token changes the step Delta, so the response is not linear in the input.
    m = _mixer().double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    y1, y2 = m(x), m(2 * x)
    assert (y2 - 2 * y1).abs().max().item() > 1e-3
