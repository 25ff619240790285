"""s4d: the decoding step's cached coefficients follow the parameters."""

import torch

from wavedistill.mixers import build_mixer


def test_step_coefficients_are_recomputed_after_a_parameter_update():
    torch.manual_seed(0)
    m = build_mixer("s4d", 16, n_heads=2, state_dim=8).double().eval()
    x = torch.randn(2, 16, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    with torch.no_grad():
        before, _ = m.step(x, state)
        # An in-place optimiser-style update: the cache key (parameter versions) must change with it.
        m.log_dt.add_(0.5)
        m.c_re.mul_(2.0)
        after, _ = m.step(x, state)
    m._step_cache = None
    with torch.no_grad():
        fresh, _ = m.step(x, state)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)


def test_step_keeps_gradients_when_autograd_is_on():
    m = build_mixer("s4d", 16, n_heads=2, state_dim=8).double()
    x = torch.randn(1, 16, dtype=torch.float64)
    y, _ = m.step(x, m.init_state(1, dtype=torch.float64))
    y.sum().backward()
    assert m.log_dt.grad is not None and m.log_dt.grad.abs().sum() > 0
    assert m._step_cache is None
