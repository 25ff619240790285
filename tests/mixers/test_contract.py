"""The contract every registered token mixer must honour.

Parametrised over ``list_mixers()``, so a newly registered mixer is covered without touching this
file. ``VARIANTS`` adds non-default settings of the known mixers that reach code the defaults skip
(a sliding window shorter than T, a kernel shorter than T, q/k norms, GQA geometry, ...).

Behavioural checks run in float64 with tight tolerances: float32 FFT round-off moves past outputs
by ~1e-5 under a large future perturbation (hf-surgery.md section 4), which would hide a real leak.
Sequence lengths are not powers of two, so an FFT that is not zero-padded to >= 2T - 1 shows up.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_causal, tiny_model
from wavedistill.mixers import build_mixer, list_mixers, mixer_kwargs
from wavedistill.surgery import convert, converted_layers

MIXERS = list_mixers()
T = 37  # not a power of two
D = 24  # default head_dim is 8 here, so mixers get 3 heads

VARIANTS = {
    "attention": [dict(qk_norm=True, n_heads=4, n_kv_heads=2, head_dim=6, rope=False)],
    "fnet": [dict(proj=False)],
    "frequency_band": [dict(window=5, qk_norm=True, n_heads=4, n_kv_heads=2, head_dim=6, n_bands=3, kernel_len=20)],
    "gated_delta_net": [dict(qk_norm=True, n_heads=4, n_kv_heads=2, head_dim=6, chunk=8)],
    "learned_gate": [dict(kernel_len=10, gate=False)],
    "phase_attention": [dict(window=5, qk_norm=True, n_heads=4, n_kv_heads=2, head_dim=6)],
    "phase_shift": [dict(n_sections=3)],
    "rotary_gla": [dict(qk_norm=True, n_heads=4, n_kv_heads=2, head_dim=6, feature_dim=9, chunk=8),
                   dict(window=5, n_heads=4, n_kv_heads=2, head_dim=6, chunk=8),
                   dict(window=5, sinks=3, n_heads=4, n_kv_heads=2, head_dim=6, chunk=8),
                   dict(feature_map="softmax", n_heads=4, n_kv_heads=2, head_dim=6),
                   dict(feature_map="taylor", window=5, sinks=2, n_heads=4, n_kv_heads=2, head_dim=6, chunk=8),
                   dict(feature_map="taylor", n_heads=4, n_kv_heads=2, head_dim=6)],
    "s4d": [dict(state_dim=8, dt_min=0.01, dt_max=0.5, n_heads=4, n_kv_heads=2, head_dim=6)],
    "selective_s4d": [dict(state_dim=6, dt_min=0.05, dt_max=2.0, chunk=8, n_heads=4, n_kv_heads=2, head_dim=6)],
    "wave_network": [dict(mode="modulation")],
    "wda": [dict(n_masks=3, n_components=2, n_heads=4, n_kv_heads=2, head_dim=6), dict(n_masks=1, n_components=1)],
}


# Out-of-range settings, one or more per mixer; each must be refused with a one-line MixerValueError.
BAD_SETTINGS = {
    "attention": [dict(n_heads=3, n_kv_heads=2), dict(head_dim=-1)],
    "fnet": [dict(n_heads=0)],
    "frequency_band": [dict(window=0), dict(kernel_len=-5), dict(n_bands=0)],
    "gated_delta_net": [dict(chunk=0), dict(min_tau=1.0), dict(min_tau=600.0), dict(causal=False)],
    "learned_gate": [dict(kernel_len=-5), dict(short_len=0), dict(n_decays=0)],
    "phase_attention": [dict(window=0), dict(head_dim=1), dict(causal=False)],
    "phase_shift": [dict(n_sections=0)],
    "rotary_gla": [dict(feature_map="relu"), dict(min_tau=1.0), dict(min_tau=600.0), dict(chunk=0), dict(window=-1),
                   dict(window=4, feature_map="softmax"), dict(window=4, sinks=-1), dict(sinks=2),
                   dict(feature_map="taylor", feature_dim=4), dict(feature_map="taylor", head_dim=32)],
    "s4d": [dict(state_dim=1), dict(state_dim=7), dict(dt_min=0.0), dict(dt_min=0.2, dt_max=0.1), dict(causal=False)],
    "selective_s4d": [dict(state_dim=0), dict(state_dim=5), dict(dt_min=0.0), dict(dt_min=0.2, dt_max=0.1),
                      dict(chunk=0), dict(causal=False)],
    "wave_network": [dict(eps=0.0), dict(mode="sum")],
    "wda": [dict(n_masks=0), dict(n_components=0), dict(causal=False)],
}


def _slug(kw: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in kw.items())


CASES = [pytest.param(name, {}, id=name) for name in MIXERS] + [
    pytest.param(name, kw, id=f"{name}-{_slug(kw)}") for name in MIXERS for kw in VARIANTS.get(name, [])]


def make(name: str, kw: dict, *, randomize: bool = True, dtype=torch.float64):
    """Build a mixer; with ``randomize``, jitter every parameter.

    Several mixers start with a branch switched off (the FFT branch of frequency_band, the imaginary
    read-out of wave_network, the gate of learned_gate): at that init a defect in the branch would be
    invisible, so behavioural tests run on jittered weights.
    """
    torch.manual_seed(42)
    m = build_mixer(name, D, **kw)
    if randomize:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return m.to(dtype)


def rand_x(B: int = 2, dtype=torch.float64) -> torch.Tensor:
    torch.manual_seed(42)
    return torch.randn(B, T, D, dtype=dtype)


@pytest.mark.parametrize("d", [8, 24, 64])
@pytest.mark.parametrize("name", MIXERS)
def test_builds_with_defaults_and_keeps_shape(name, d):
    torch.manual_seed(42)
    m = build_mixer(name, d)
    assert m.causal is True, "mixers must be causal unless asked otherwise"
    x = torch.randn(2, T, d)
    y = m(x)
    assert y.shape == (2, T, d)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,kw", CASES)
def test_future_perturbation_does_not_move_the_past(name, kw):
    m = make(name, kw)
    with torch.no_grad():
        assert_causal(m, rand_x())


@pytest.mark.parametrize("name,kw", CASES)
def test_causal_with_left_padding_mask(name, kw):
    # The pad-zeroing / normalisation code path must not open a route from the future either.
    m = make(name, kw)
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[1, :5] = False
    with torch.no_grad():
        assert_causal(lambda x: m(x, padding_mask=pad), rand_x())


def _check_padding(m, side: str, n_pad: int = 6) -> None:
    """Row 0 is a full sequence; row 1 a shorter one padded on ``side`` with NON-zero random vectors."""
    x = rand_x()
    short = x[1, : T - n_pad].clone()
    batch = x.clone()
    pad = torch.ones(2, T, dtype=torch.bool)
    junk = 3 * torch.randn(n_pad, D, dtype=x.dtype)  # a non-zero pad embedding must not leak
    if side == "left":
        batch[1, :n_pad], batch[1, n_pad:] = junk, short
        pad[1, :n_pad] = False
        real = slice(n_pad, T)
    else:
        batch[1, : T - n_pad], batch[1, T - n_pad:] = short, junk
        pad[1, T - n_pad:] = False
        real = slice(0, T - n_pad)
    with torch.no_grad():
        out = m(batch, padding_mask=pad)
        torch.testing.assert_close(out[0], m(x[:1])[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out[1, real], m(short[None])[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name,kw", CASES)
def test_padded_batch_matches_unpadded_sequence(name, kw, side):
    _check_padding(make(name, kw), side)


@pytest.mark.parametrize("name", [n for n in MIXERS if "bias" in mixer_kwargs(n)])
def test_left_padding_is_invisible_with_biased_projections(name):
    # Surgery passes bias=attention_bias from the teacher's config (Qwen2 always has q/k/v biases).
    # Zeroing the pad *inputs* is then not enough: v_proj(0) = bias is non-zero and gets mixed into
    # the real tokens that follow the pads.
    _check_padding(make(name, dict(bias=True)), "left")


@pytest.mark.parametrize("name,kw", CASES)
def test_gradients_reach_every_parameter(name, kw):
    # Default init on purpose: zero-initialised branches (gates, read-outs, band weights) must still
    # receive a gradient, otherwise training could never switch them on.
    m = make(name, kw, randomize=False, dtype=torch.float32)
    x = rand_x(dtype=torch.float32).requires_grad_(True)
    m(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.abs().max() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("name,kw", CASES)
def test_fast_path_matches_naive_reference(name, kw, padded):
    m = make(name, kw)
    x = rand_x().requires_grad_(True)
    pad = None
    if padded:
        pad = torch.ones(2, T, dtype=torch.bool)
        pad[1, :4] = False
    params = [x, *m.parameters()]
    cot = torch.randn(2, T, D, dtype=torch.float64)  # a random cotangent checks every output direction

    fast = m(x, padding_mask=pad)
    naive = m.forward_naive(x, padding_mask=pad)
    torch.testing.assert_close(fast, naive, atol=1e-9, rtol=1e-9)
    g_fast = torch.autograd.grad((fast * cot).sum(), params, allow_unused=True)
    g_naive = torch.autograd.grad((naive * cot).sum(), params, allow_unused=True)
    names = ["input", *(n for n, _ in m.named_parameters())]
    for n, a, b in zip(names, g_fast, g_naive):
        assert (a is None) == (b is None), f"{n}: gradient exists on one path only"
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda s, n=n: f"grad of {n}: {s}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name,kw", CASES)
def test_runs_in_low_precision_and_returns_input_dtype(name, kw, dtype):
    # rfft rejects bf16 on CPU, so mixers must do FFT work in float32 and cast back.
    m = make(name, kw, dtype=dtype)
    x = rand_x(dtype=dtype)
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[1, :3] = False
    with torch.no_grad():
        for out in (m(x), m(x, padding_mask=pad)):
            assert out.dtype == dtype
            assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name,kw", CASES)
def test_a_bf16_cast_stays_within_a_few_times_input_rounding_over_2048_positions(name, kw):
    # A recurrence's decays, frequencies and steps act at every lag, so rounding them to bf16 grows with length
    # (s4d's was 0.22 relative L2 at 2,048 positions before keep_float32). Compare the bf16 cast with rounding
    # the input alone (what any bf16 model pays): within 4x of that, or 1 %.
    import copy

    m = make(name, kw, dtype=torch.float32)
    m16 = copy.deepcopy(m).to(torch.bfloat16)
    torch.manual_seed(0)
    x = torch.randn(1, 2048, D)
    with torch.no_grad():
        ref = m(x)
        cast = (m16(x.bfloat16()).float() - ref).norm() / ref.norm()
        rounding = (m(x.bfloat16().float()) - ref).norm() / ref.norm()
    assert cast <= max(4 * rounding, 0.01), f"bf16 cast off by {cast:.4f} (input rounding alone: {rounding:.4f})"


@pytest.mark.parametrize("name,kw", CASES)
def test_trains_under_a_bf16_autocast(name, kw):
    # `distill --dtype bfloat16` keeps float32 mixer weights and runs them under accelerate's bf16 autocast:
    # matmuls come out bf16 next to float32 tensors, and every mixer must still run forward and backward.
    m = make(name, kw, dtype=torch.float32)
    x = rand_x(dtype=torch.float32).requires_grad_(True)
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[1, :3] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, padding_mask=pad)
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", MIXERS)
def test_out_of_range_settings_are_refused_in_one_line(name):
    from wavedistill.errors import MixerValueError

    assert BAD_SETTINGS.get(name), f"add the out-of-range settings of {name!r} to BAD_SETTINGS"
    for kw in BAD_SETTINGS[name]:
        with pytest.raises(MixerValueError) as err:
            build_mixer(name, D, **kw)
        assert "\n" not in str(err.value) and str(err.value), f"{kw}: {err.value!r}"


def test_unknown_mixer_name_lists_known_names():
    with pytest.raises(KeyError) as err:
        build_mixer("no_such_mixer", D)
    message = str(err.value)
    assert "no_such_mixer" in message
    for name in MIXERS:
        assert name in message


@pytest.mark.parametrize("name", MIXERS)
def test_unknown_kwarg_is_a_type_error_naming_accepted_kwargs(name):
    with pytest.raises(TypeError) as err:
        build_mixer(name, D, definitely_not_an_option=1)
    message = str(err.value)
    assert "definitely_not_an_option" in message
    for kw in mixer_kwargs(name):
        assert kw in message


def test_bidirectional_fnet_exists_and_leaks_the_future():
    # FNet's 2-D DFT mixes every token with every other one. It is kept for encoders only; this
    # documents the leak that makes surgery refuse it.
    m = make("fnet", dict(causal=False))
    assert m.causal is False
    x = rand_x()
    x2 = x.clone()
    x2[:, T // 2 + 1:] += 10 * torch.randn_like(x2[:, T // 2 + 1:])
    with torch.no_grad():
        leak = (m(x2)[:, : T // 2 + 1] - m(x)[:, : T // 2 + 1]).abs().max().item()
    assert leak > 1e-3, f"bidirectional FNet should see the future, past outputs moved by only {leak:.1e}"


def test_bidirectional_fnet_fast_path_matches_naive_reference():
    # fft2 must equal the explicit 2-D DFT to float64 precision, as for every other mixer. (The DFT
    # matrices of the reference must therefore be built in float64, not in complex64 and cast up.)
    m = make("fnet", dict(causal=False))
    x = rand_x()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.forward_naive(x), atol=1e-9, rtol=1e-9)


def test_surgery_refuses_non_causal_fnet():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="causal"):
        convert(model, "fnet", layers=[0], causal=False)
    assert converted_layers(model) == [], "a refused conversion must leave the model untouched"
