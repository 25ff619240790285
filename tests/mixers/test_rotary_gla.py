"""rotary_gla beyond the registry contract: what its hybrid branches and its exact-exp diagnostic reduce to."""

from __future__ import annotations

import pytest
import torch

from tests.mixers.test_contract import D, T, make, rand_x
from wavedistill.mixers import build_mixer

GEOMETRY = dict(n_heads=4, n_kv_heads=2, head_dim=6)


def _same_weights(src, dst):
    dst = dst.to(torch.float64)  # before loading, so that float64 weights are not rounded through float32
    missing = dst.load_state_dict(src.state_dict(), strict=False)
    assert not missing.missing_keys, f"{type(dst).__name__} lacks weights from the source: {missing.missing_keys}"
    return dst


def _padded():
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[1, :4] = False
    return pad


def test_hybrid_with_the_linear_branch_off_is_the_teachers_window():
    hybrid = make("rotary_gla", dict(window=5, **GEOMETRY))
    window = _same_weights(hybrid, build_mixer("frequency_band", D, window=5, fft_branch=False, **GEOMETRY))
    hybrid.use_linear = False
    x, pad = rand_x(), _padded()
    with torch.no_grad():
        got, want = hybrid(x, padding_mask=pad), window(x, padding_mask=pad)
    torch.testing.assert_close(got[pad], want[pad], atol=1e-10, rtol=0)


def test_hybrid_with_the_band_off_is_the_softmax_free_mixer():
    hybrid = make("rotary_gla", dict(window=5, **GEOMETRY))
    plain = _same_weights(hybrid, build_mixer("rotary_gla", D, **GEOMETRY))
    hybrid.use_band = False
    x, pad = rand_x(), _padded()
    with torch.no_grad():
        torch.testing.assert_close(hybrid(x, padding_mask=pad)[pad], plain(x, padding_mask=pad)[pad], atol=1e-10,
                                   rtol=0)


@pytest.mark.parametrize("off", ["use_band", "use_linear"])
def test_decoding_honours_a_switched_off_branch(off):
    m = make("rotary_gla", dict(window=5, **GEOMETRY))
    setattr(m, off, False)
    x, pad = rand_x(), _padded()
    with torch.no_grad():
        full = m(x, padding_mask=pad)
        head, state = m.prefill(x[:, :11], pad[:, :11])
        tail = []
        for t in range(11, T):
            y, state = m.step(x[:, t], state, pad[:, t])
            tail.append(y)
    got = torch.cat([head, torch.stack(tail, 1)], 1)
    torch.testing.assert_close(got[pad], full[pad], atol=1e-10, rtol=0)


def test_switching_off_both_branches_is_refused():
    m = make("rotary_gla", dict(window=5, **GEOMETRY))
    m.use_band = m.use_linear = False
    with pytest.raises(ValueError, match="no mixer"):
        m(rand_x())


def test_the_exact_diagnostic_without_decay_is_causal_softmax_attention():
    diag = make("rotary_gla", dict(feature_map="softmax", **GEOMETRY), randomize=False)
    with torch.no_grad():
        diag.decay_proj.bias.fill_(40.0)  # a_t = sigmoid(40): no decay within float64 precision
        for p in (diag.q_proj.weight, diag.k_proj.weight):
            p.normal_()
    attention = _same_weights(diag, build_mixer("attention", D, **GEOMETRY))
    x, pad = rand_x(), _padded()
    with torch.no_grad():
        torch.testing.assert_close(diag(x, padding_mask=pad)[pad], attention(x, padding_mask=pad)[pad], atol=1e-9,
                                   rtol=0)
