"""WaveTransformer: every registered mixer inside the same model, causal, padding-safe, and read out selectively."""

import pytest
import torch

from tests.conftest import assert_causal
from wavedistill.errors import WavedistillError
from wavedistill.lab.model import PhaseEmbedding, WaveTransformer
from wavedistill.mixers import list_mixers

V, T = 23, 19


def model(mixer: str, **kw) -> WaveTransformer:
    torch.manual_seed(0)
    m = WaveTransformer(V, 32, mixer=mixer, d_model=16, n_layers=2, n_heads=2, d_mlp=32, norm="rms", **kw)
    with torch.no_grad():  # move zero-initialised branches of the mixers off their init
        for block in m.blocks:
            for p in block.mixer.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return m.double().eval()


def ids(B=2, n=T, seed=0):
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mixer", list_mixers())
def test_every_mixer_in_the_lab_model_is_causal(mixer):
    m = model(mixer)
    assert_causal(lambda x: m(x), ids(), vocab=V)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mixer", list_mixers())
def test_padding_does_not_change_the_real_positions(mixer, side):
    # Row 0 is 12 real tokens and 7 pads whose token (and so embedding) is not zero; batched, it must
    # give the same states on its real tokens as the unpadded 12-token sequence alone.
    m = model(mixer)
    x = ids()
    pad = torch.ones_like(x, dtype=torch.bool)
    real = slice(7, T) if side == "left" else slice(0, 12)
    pad[0] = False
    pad[0, real] = True
    with torch.no_grad():
        batched = m(x, pad)
        alone = m(x[:1, real])
    torch.testing.assert_close(batched[0, real], alone[0], atol=1e-10, rtol=0)


def test_keep_reads_out_only_the_selected_positions_with_the_same_values():
    m = model("learned_gate")
    x = ids()
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[0, 3], keep[1, [5, 18]] = True, True
    with torch.no_grad():
        full = m(x)
        selected = m(x, keep=keep)
    assert selected.shape == (3, 16)
    torch.testing.assert_close(selected, full[keep], atol=1e-12, rtol=0)


def test_classifier_pools_over_real_tokens_only():
    m = model("attention", n_classes=3, mixer_kwargs={"causal": False})
    x = ids()
    pad = torch.ones_like(x, dtype=torch.bool)
    pad[1, 9:] = False
    with torch.no_grad():
        batched = m.classify(m(x, pad), pad)
        alone = m.classify(m(x[1:, :9]), None)
        other = x.clone()
        other[1, 9:] = (other[1, 9:] + 1) % V
        changed = m.classify(m(other, pad), pad)
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(changed, batched, atol=1e-10, rtol=0)


def test_bidirectional_attention_sees_the_future_and_causal_does_not():
    x = ids()
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % V
    for causal, moves in ((True, False), (False, True)):
        m = model("attention", mixer_kwargs={"causal": causal})
        with torch.no_grad():
            delta = (m(x)[:, 0] - m(x2)[:, 0]).abs().max().item()
        assert (delta > 1e-6) == moves


def test_phase_embedding_gives_numbers_fixed_waves_and_other_tokens_learned_rows():
    emb = PhaseEmbedding(vocab_size=14, d_model=8, p=13)
    assert emb.waves.shape == (13, 12)  # cos and sin of k = 1..6
    a, k = 5, 2
    expected = torch.cos(torch.tensor(2 * torch.pi * k * a / 13)).item()
    assert emb.waves[a, k - 1].item() == pytest.approx(expected, abs=1e-6)
    table = emb.table()
    assert table.shape == (14, 8)
    # Only the projection (numbers) and the '=' row are learned: 12 * 8 + 1 * 8 parameters.
    assert sum(p.numel() for p in emb.parameters()) == 12 * 8 + 8
    with pytest.raises(WavedistillError, match="phase_embedding"):
        PhaseEmbedding(vocab_size=5, d_model=8, p=13)


def test_phase_embeddings_start_at_the_scale_of_learned_embeddings():
    torch.manual_seed(0)
    learned = WaveTransformer(114, 3, d_model=128, norm="none").embedding_table()
    phase = WaveTransformer(114, 3, d_model=128, norm="none", phase_embedding=113).embedding_table()
    # Per-entry std 1/sqrt(D) for numbers and for the other tokens alike, so the comparison is of the bias only.
    for table in (learned, phase[:113], phase[113:]):
        assert table.std().item() == pytest.approx(128**-0.5, rel=0.15)


def test_model_refuses_bad_geometry_and_long_inputs():
    with pytest.raises(WavedistillError, match="multiple of n_heads"):
        WaveTransformer(V, 8, d_model=10, n_heads=4)
    m = WaveTransformer(V, 8, d_model=16, n_heads=2, d_mlp=16)
    with pytest.raises(WavedistillError, match="longer than the model's max_len"):
        m(ids(1, 9))


def test_real_valued_inputs_go_through_a_linear_map_and_stay_causal():
    torch.manual_seed(0)
    m = WaveTransformer(2, 32, mixer="selective_s4d", d_model=16, n_layers=2, n_heads=2, d_mlp=32,
                        in_features=3).double().eval()
    x = torch.randn(2, T, 3, dtype=torch.float64)
    hidden = []
    out = m.logits(m(x, hidden=hidden))
    assert out.shape == (2, T, 2) and len(hidden) == 2 and hidden[0].shape == (2, T, 16)
    x2 = x.clone()
    x2[:, 10:] += 5.0  # perturb the future of position 9
    assert torch.allclose(m.logits(m(x2))[:, :10], out[:, :10], atol=1e-12)
    with pytest.raises(WavedistillError, match="phase_embedding"):
        WaveTransformer(2, 32, d_model=16, n_heads=2, phase_embedding=2, in_features=3)
