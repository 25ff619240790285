"""Model-level surgery: replacing self-attention in HF decoders, then checking what must not change.

Every supported family is built tiny and offline from its config class (tests/conftest.py). All
mixers run on Qwen3; the other families run the two mixers with the most family-specific wiring
(learned_gate: v/o copied with GQA; frequency_band: q/k/v/o, q/k norms, scaling and rotary tables
taken from the teacher), which keeps the module fast. Wave layers are [0, 2], so the first cache
layer HF sizes positions and masks from is a wave layer (hf-surgery.md 2.3).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from tests.conftest import PAD_ID, TINY_FAMILIES, VOCAB, assert_causal, tiny_model
from wavedistill.mixers import build_mixer, list_mixers
from wavedistill.surgery import (FAMILIES, WaveAttention, WaveCacheLayer, attention_geometry, convert,
                                 converted_layers, mixer_parameters, unconvert)

WAVE_LAYERS = [0, 2]
T = 37  # not a power of two
N_NEW = 10

CASES = [pytest.param("qwen3", m, id=f"qwen3-{m}") for m in list_mixers()] + [
    pytest.param(f, m, id=f"{f}-{m}")
    for f in TINY_FAMILIES if f != "qwen3" for m in ("learned_gate", "frequency_band")]

# frequency_band's default window (64) is longer than the test sequences, which would leave its
# sliding-window mask (and that mask's padding and cache handling) untested.
MODEL_KW = {"frequency_band": dict(window=8)}


def jitter_mixers(model, scale: float = 0.1) -> None:
    """Move every mixer parameter off its init, so zero-initialised branches (the FFT branch of
    frequency_band, wave_network's imaginary read-out, ...) take part in what is being tested."""
    gen = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for p in mixer_parameters(model):
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def converted(family: str, mixer: str, *, dtype=torch.float64, attn_implementation: str = "sdpa", **kw):
    model = tiny_model(family, attn_implementation=attn_implementation)
    convert(model, mixer, layers=WAVE_LAYERS, **{**MODEL_KW.get(mixer, {}), **kw})
    jitter_mixers(model)
    return model.to(dtype).eval()


def rand_ids(B: int, n: int, seed: int = 42) -> torch.Tensor:
    # Token ids exclude PAD_ID so that "real" tokens are never confused with padding.
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 1, (B, n), generator=g)
    return ids + (ids >= PAD_ID).long()


def greedy(model, ids, **kw) -> torch.Tensor:
    return model.generate(ids, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False, pad_token_id=PAD_ID,
                          **kw)


@pytest.mark.parametrize("family,mixer", CASES)
def test_convert_replaces_attention_freezes_teacher_and_unconvert_restores_logits(family, mixer):
    model = tiny_model(family)
    ids = rand_ids(2, T)
    with torch.no_grad():
        before = model(ids).logits

    paths = convert(model, mixer, layers=WAVE_LAYERS)
    assert paths == [f"model.layers.{i}.self_attn" for i in WAVE_LAYERS]
    assert converted_layers(model) == WAVE_LAYERS
    for path in paths:
        assert isinstance(model.get_submodule(path), WaveAttention)
    # Only the mixers train; the teacher, including the attention modules kept for unconvert, is frozen.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if any(n.startswith(f"{path}.mixer.") for path in paths)}
    assert trainable, "a converted model must have something to train"
    assert trainable == expected
    with torch.no_grad():
        out = model(ids).logits
    assert out.shape == before.shape and torch.isfinite(out).all()

    assert unconvert(model) == paths
    assert converted_layers(model) == []
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(after, before), "unconvert must give back the teacher bit for bit"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_attention_geometry_reports_projection_bias(family):
    # Mixers get bias=attention_geometry(...)["bias"]; it must say whether the teacher's q/k/v
    # projections actually carry a bias, or the teacher's biases are silently dropped at init.
    model = tiny_model(family)
    attn = model.get_decoder().layers[0].self_attn
    assert attention_geometry(model)["bias"] == (attn.v_proj.bias is not None)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("family,mixer", CASES)
def test_converted_model_is_causal(family, mixer, mode):
    model = converted(family, mixer)
    model.train(mode == "train")
    assert_causal(lambda ids: model(ids, use_cache=False).logits, rand_ids(2, T), vocab=VOCAB)


@pytest.mark.parametrize("family,mixer", CASES)
def test_greedy_generate_with_cache_equals_without(family, mixer, **kw):
    model = converted(family, mixer, **kw)
    prompt = rand_ids(2, 9)
    cached = greedy(model, prompt, use_cache=True, return_dict_in_generate=True)
    # The cached run really went through the wave cache layers (not a silent full recompute).
    for i in WAVE_LAYERS:
        assert isinstance(cached.past_key_values.layers[i], WaveCacheLayer)
    uncached = greedy(model, prompt, use_cache=False)
    assert cached.sequences.shape == (2, 9 + N_NEW)
    assert torch.equal(cached.sequences, uncached)


def test_hybrid_rotary_gla_generates_with_its_band_and_state_in_the_cache():
    # The hybrid keeps its band's last keys beside the linear state; 9 prompt tokens + 10 new ones
    # pass through a 4-token band many times.
    test_greedy_generate_with_cache_equals_without("qwen3", "rotary_gla", window=4)
    test_left_padded_batched_generate_equals_per_row("qwen3", "rotary_gla", window=4)


@pytest.mark.parametrize("family,mixer", CASES)
def test_left_padded_batched_generate_equals_per_row(family, mixer, **kw):
    model = converted(family, mixer, **kw)
    rows = [rand_ids(1, 9, seed=1)[0], rand_ids(1, 5, seed=2)[0]]
    width = max(len(r) for r in rows)
    ids = torch.full((2, width), PAD_ID)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = r, 1
    # References are full recomputes (use_cache=False), so a cache defect cannot hide by being
    # present on both sides; the batched run is checked with and without the cache.
    for use_cache in (True, False):
        batched = greedy(model, ids, attention_mask=mask, use_cache=use_cache)[:, width:]
        for b, r in enumerate(rows):
            single = greedy(model, r[None], use_cache=False)[0, len(r):]
            assert torch.equal(batched[b], single), (
                f"use_cache={use_cache}, row {b}: {batched[b].tolist()} != {single.tolist()}")


def _padded_forward_gap(model, side: str, n_pad: int = 6) -> float:
    ids = rand_ids(2, T)
    real = ids[1, : T - n_pad].clone()
    batch = ids.clone()
    mask = torch.ones(2, T, dtype=torch.long)
    if side == "left":
        batch[1, :n_pad], batch[1, n_pad:], mask[1, :n_pad] = PAD_ID, real, 0
        keep = slice(n_pad, T)
    else:
        batch[1, T - n_pad:], mask[1, T - n_pad:] = PAD_ID, 0
        keep = slice(0, T - n_pad)
    # Real tokens keep the positions they have unpadded (as generate() does). HF builds rotary
    # tables in float32 even for a float64 model, so shifted positions would only agree to ~1e-6.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(batch, attention_mask=mask, position_ids=positions, use_cache=False).logits
        gap0 = (out[0] - model(ids[:1], use_cache=False).logits[0]).abs().max().item()
        gap1 = (out[1, keep] - model(real[None], use_cache=False).logits[0]).abs().max().item()
    return max(gap0, gap1)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family,mixer", CASES)
def test_padded_forward_matches_unpadded_on_real_tokens(family, mixer, side):
    # The pad token (id 7) has a non-zero embedding, so a mixer that mixes pad hidden states into
    # real tokens shows up here (with a zero pad embedding it would be hidden, hf-surgery.md 5).
    gap = _padded_forward_gap(converted(family, mixer), side)
    assert gap <= 1e-6, f"{side} padding changed real-token logits by {gap:.2e}"


def test_padding_mask_is_read_from_eager_float_masks_too():
    # Eager attention hands layers an additive float mask instead of sdpa's boolean one.
    gap = _padded_forward_gap(converted("qwen3", "learned_gate", attn_implementation="eager"), "left")
    assert gap <= 1e-6, f"left padding changed real-token logits by {gap:.2e}"


def test_beam_search_with_cache_equals_without():
    # Beam search reorders the cache every step: the wave cache layer's history must follow.
    model = converted("qwen3", "learned_gate")
    prompt = rand_ids(2, 9)
    cached = greedy(model, prompt, num_beams=2, use_cache=True)
    uncached = greedy(model, prompt, num_beams=2, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_frequency_band_with_full_window_and_zero_fft_branch_reproduces_teacher(family):
    # With the teacher's q/k/v/o, norms, scaling and rotary tables, a window covering everything
    # the teacher layer sees and the FFT branch at its zero init, frequency_band IS the attention.
    # (Gemma3's sliding layers see only `sliding_window` keys, so there the window is that.)
    model = tiny_model(family)
    ids = rand_ids(2, T)
    with torch.no_grad():
        teacher = model(ids).logits
    cfg = model.config
    for i in WAVE_LAYERS:
        sliding = (getattr(cfg, "layer_types", None) or [None] * (i + 1))[i] == "sliding_attention"
        convert(model, "frequency_band", layers=[i], window=cfg.sliding_window if sliding else T + 5)
    for i in WAVE_LAYERS:
        band = model.get_decoder().layers[i].self_attn.mixer.band_weight
        assert band is not None and torch.count_nonzero(band) == 0, "the FFT branch starts at zero"
    with torch.no_grad():
        student = model(ids).logits
    torch.testing.assert_close(student, teacher, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f != "gemma3_text"])
def test_attention_mixer_with_the_teachers_weights_is_the_teacher(family):
    # The control: rebuilding every layer's attention from the teacher's weights changes nothing.
    # (Gemma3's sliding layers see a window, which full attention does not reproduce.)
    model = tiny_model(family)
    ids = rand_ids(2, T)
    with torch.no_grad():
        teacher = model(ids).logits
    convert(model, "attention")
    with torch.no_grad():
        student = model(ids).logits
    torch.testing.assert_close(student, teacher, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if FAMILIES[f].qk_norm])
def test_frequency_band_qk_norms_match_the_teachers_after_init(family):
    # Qwen3 scales by w, Gemma3 by (1 + w) and names its epsilon `eps`: the copied norm must compute
    # what the teacher's norm computes, whatever the family's convention.
    model = tiny_model(family)
    attn = model.get_decoder().layers[0].self_attn
    mixer = build_mixer("frequency_band", model.config.hidden_size, qk_norm=True, **attention_geometry(model))
    mixer.init_from_attention(attn)
    x = torch.randn(2, 5, attn.head_dim)
    with torch.no_grad():
        torch.testing.assert_close(mixer.q_norm(x), attn.q_norm(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(mixer.k_norm(x), attn.k_norm(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_cache_crop_rolls_back_the_wave_state(family):
    # transformers 5.x rolls rejected draft tokens back with `cache.crop(-n)` (negative = remove n),
    # after `activate_past_recording()`. The wave layer's recurrent state must go back by the same n, or
    # the next call continues from tokens that were never accepted. Gemma3's wave layer 0 wraps a sliding
    # layer, which can only be cropped if past recording reached it.
    model = converted(family, "learned_gate")
    ids = rand_ids(1, 12)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        model(ids[:, :9], cache=cache, use_cache=True)
        cache.activate_past_recording()
        model(ids[:, 9:11], cache=cache, use_cache=True)  # two draft tokens, then rejected
        cache.crop(-2)
        assert cache.get_seq_length() == 9
        for i in WAVE_LAYERS:
            assert cache.layers[i].x is None, "a stateful mixer keeps no input history"
            assert cache.layers[i].state["pos"].tolist() == [9], f"wave layer {i} still holds the rejected tokens"
        resumed = model(ids[:, 9:12], cache=cache, use_cache=True).logits
        with pytest.raises(ValueError, match="roll a recurrent wave state back"):
            cache.crop(-5)  # further back than the last call reaches
    torch.testing.assert_close(resumed, full[:, 9:12], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_prompt_lookup_decoding_equals_greedy(family):
    # End to end: prompt-lookup decoding proposes drafts from n-grams of the prompt and crops the
    # cache when they are rejected; its output must be the greedy output.
    model = converted(family, "learned_gate")
    for seed in range(4):
        prompt = rand_ids(1, 9, seed=seed)
        assert torch.equal(greedy(model, prompt, prompt_lookup_num_tokens=3), greedy(model, prompt)), f"seed {seed}"


def test_unsupported_architecture_is_refused_naming_supported_families():
    torch.manual_seed(42)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64))
    with pytest.raises(ValueError) as err:
        convert(gpt2, "learned_gate")
    message = str(err.value)
    assert "gpt2" in message
    for family in FAMILIES:
        assert family in message


@pytest.mark.parametrize("layers", [[3], [-1], [0, 7], [0, 0], [2, 1, 2]],
                         ids=["past-end", "negative", "one-out-of-range", "duplicate", "duplicate-unsorted"])
def test_bad_layer_indices_are_refused(layers):
    model = tiny_model("qwen3")
    with pytest.raises(ValueError):
        convert(model, "learned_gate", layers=layers)
    assert converted_layers(model) == [], "a refused conversion must leave the model untouched"
    assert all(p.requires_grad for p in model.parameters()), "nor freeze it"


def test_converting_a_layer_twice_is_refused():
    model = tiny_model("qwen3")
    convert(model, "learned_gate", layers=[0])
    with pytest.raises(ValueError, match="already converted"):
        convert(model, "learned_gate", layers=[0, 1])
    assert converted_layers(model) == [0]


@pytest.mark.parametrize("mixer", list_mixers())
def test_stories260k_all_layers_converted_is_causal(stories260k, mixer):
    # A window shorter than T, so the blocked local attention is exercised across blocks.
    kw = dict(window=16) if mixer == "frequency_band" else {}
    model = stories260k
    paths = convert(model, mixer, **kw)
    assert len(paths) == model.config.num_hidden_layers == 5
    jitter_mixers(model)
    model.double()
    ids = torch.randint(3, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(42))
    assert_causal(lambda x: model(x, use_cache=False).logits, ids, vocab=model.config.vocab_size)
