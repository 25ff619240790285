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


@pytest.mark.parametrize("off", ["use_band", "use_linear", "use_sinks", "use_band,use_sinks", "use_linear,use_sinks"])
@pytest.mark.parametrize("sinks", [0, 3])
def test_decoding_honours_a_switched_off_branch(off, sinks):
    m = make("rotary_gla", dict(window=5, sinks=sinks, **GEOMETRY))
    for name in off.split(","):
        setattr(m, name, False)
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


def test_the_window_and_sinks_alone_are_softmax_over_the_band_and_the_first_real_tokens():
    # With the linear branch off, a hybrid with sinks is exact attention over the last W keys and the first S real
    # tokens: the StreamingLLM mask, built here densely from the teacher-style softmax.
    W, S = 5, 3
    m = make("rotary_gla", dict(window=W, sinks=S, **GEOMETRY))
    m.use_linear = False
    x, pad = rand_x(), _padded()
    with torch.no_grad():
        got = m(x, padding_mask=pad)
        q, k, v = m.qkv(torch.where(pad[..., None], x, 0.0), None, pad)
        lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]
        first = pad & (pad.long().cumsum(1) <= S)  # (B, T)
        see = (((lag >= 0) & (lag < W))[None] | (first[:, None, :] & (lag >= 0)[None])) & pad[:, None, :]
        see = see | torch.eye(T, dtype=torch.bool)
        scores = (q @ k.transpose(-1, -2) * m.scaling).masked_fill(~see[:, None], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, T, -1)
        want = m.o_proj(y)
    torch.testing.assert_close(got[pad], want[pad], atol=1e-10, rtol=0)


def test_sinks_stay_out_of_the_linear_state_and_change_the_output():
    x, pad = rand_x(), _padded()
    with_sinks = make("rotary_gla", dict(window=5, sinks=3, **GEOMETRY))
    plain = _same_weights(with_sinks, build_mixer("rotary_gla", D, window=5, **GEOMETRY))
    with torch.no_grad():
        a, b = with_sinks(x, padding_mask=pad), plain(x, padding_mask=pad)
        with_sinks.use_sinks = False
        c = with_sinks(x, padding_mask=pad)
    torch.testing.assert_close(c, b, atol=1e-12, rtol=0)  # switched off: the window hybrid exactly
    assert (a - b)[:, 8:].abs().amax() > 1e-3  # past the band the sinks are weighed exactly, not by the state
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-12, rtol=0)  # inside the first band: nothing differs


def test_taylor_features_give_the_second_order_expansion_of_the_softmax_score():
    m = make("rotary_gla", dict(feature_map="taylor", **GEOMETRY))
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 5, 6, dtype=torch.float64), torch.randn(2, 4, 5, 6, dtype=torch.float64)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) / 6 ** 0.5
    got = torch.einsum("bhtf,bhsf->bhts", m.features(q), m.features(k))
    torch.testing.assert_close(got, 1 + s + s ** 2 / 2, atol=1e-12, rtol=0)
    assert m.n_features == 1 + 6 + 36 and got.min() > 0  # 1 + s + s^2 / 2 >= 1/2: the normaliser never vanishes


def test_a_hybrid_with_sinks_decodes_from_a_state_of_fixed_size():
    # O(window + sinks) exact tokens: the state after 64 tokens holds exactly as many numbers as after 8.
    m = make("rotary_gla", dict(window=5, sinks=3, **GEOMETRY))
    with torch.no_grad():
        sizes = [sum(t.numel() for t in m.prefill(rand_x()[:, :n])[1].values()) for n in (8, 30)]
        long = torch.randn(2, 64, D, dtype=torch.float64)
        sizes.append(sum(t.numel() for t in m.prefill(long)[1].values()))
    assert sizes[0] == sizes[1] == sizes[2]
