"""Materialised mixing matrices (MOHAWK stage 1): the matrix applied to the values reproduces the mixer's output."""

import pytest
import torch

from tests.mixers.test_contract import D, T, VARIANTS, make, rand_x
from wavedistill.errors import MixerValueError
from wavedistill.mixers import build_mixer
from wavedistill.mixers.base import mixers_with_matrix

CASES = [pytest.param(n, {}, id=n) for n in mixers_with_matrix()] + [
    pytest.param(n, kw, id=f"{n}-{i}") for n in mixers_with_matrix() for i, kw in enumerate(VARIANTS.get(n, []))]


def _values(m, x, pad):
    """(B, H, T, hd) values the matrix weighs."""
    x = torch.where(pad[..., None], x, torch.zeros((), dtype=x.dtype))
    if m.name == "rotary_gla":
        return m.qkv(x, None, pad)[2]
    u = m.zero_pads(m.v_proj(x), pad)
    return u.unflatten(-1, (m.n_heads, m.head_dim)).transpose(1, 2)


def test_the_mixers_with_a_matrix_are_the_routing_and_state_space_ones():
    assert set(mixers_with_matrix()) == {"rotary_gla", "s4d", "selective_s4d"}
    with pytest.raises(MixerValueError, match="has no materialised mixing matrix; mixers that have one: "):
        build_mixer("fnet", D).mixing_matrix(torch.zeros(1, 3, D))


@pytest.mark.parametrize("name,kw", CASES)
def test_matrix_times_values_is_the_output(name, kw):
    m = make(name, kw)
    if getattr(m, "rope", False) and m.head_dim % 2:
        pytest.skip("odd head_dim: rotary tables need an even one")
    x = rand_x()
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[1, :5] = False
    with torch.no_grad():
        M = m.mixing_matrix(x, pad)
        v = _values(m, x, pad)  # (B, H, T, hd)
        B, H, _, hd = v.shape
        if M.shape[1] == H:
            y = M @ v
        else:  # one matrix per channel
            assert M.shape[1] == H * hd
            per_channel = v.transpose(1, 2).reshape(B, T, H * hd).transpose(1, 2)  # (B, C, T)
            y = torch.einsum("bcts,bcs->btc", M, per_channel).view(B, T, H, hd).transpose(1, 2)
        y = y + getattr(m, "d_skip", torch.zeros(H * hd, dtype=x.dtype)).view(H, 1, hd) * v
        want = m(x, padding_mask=pad)
        got = m.o_proj(y.transpose(1, 2).reshape(B, T, H * hd))
    real = pad[..., None].expand_as(want)
    assert (got - want)[real].abs().max().item() < 1e-10
    assert M.triu(1).abs().max().item() == 0  # causal
    assert M[1, :, 5:, :5].abs().max().item() == 0  # real queries give pad keys nothing
    if m.mixing_rows_are_distributions:
        rows = M[1, :, 5:].sum(-1)
        assert torch.allclose(rows, torch.ones_like(rows)) and M.min().item() >= 0
