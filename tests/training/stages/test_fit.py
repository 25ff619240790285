"""The fit stage: least-squares Toeplitz fits of attention maps, and learned_gate taking such a kernel."""

import copy

import pytest
import torch

from tests.conftest import VOCAB, tiny_model
from wavedistill.errors import WavedistillError
from wavedistill.mixers import build_mixer
from wavedistill.mixers.functional import ema_basis
from wavedistill.kd.attention_maps import eager_attention
from wavedistill.training.stages.fit import attention_kernels, toeplitz_fit
from wavedistill.training.stages.transfer import transfer_step
from wavedistill.surgery import convert, wave_attention_modules


def causal_toeplitz(kernel: torch.Tensor) -> torch.Tensor:
    """(H, T) kernel -> (H, T, T) matrix M[h, t, s] = kernel[h, t - s] for s <= t."""
    H, T = kernel.shape
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return torch.where(lag >= 0, kernel[:, lag.clamp(min=0)], torch.zeros(()))


def test_toeplitz_fit_recovers_a_toeplitz_map_and_averages_each_diagonal():
    g = torch.Generator().manual_seed(0)
    kernel = torch.rand(3, 9, generator=g, dtype=torch.float64)
    maps = causal_toeplitz(kernel)[None].repeat(2, 1, 1, 1)  # (B, H, T, T)
    torch.testing.assert_close(toeplitz_fit(maps), kernel, rtol=0, atol=1e-12)
    noisy = torch.rand(2, 3, 9, 9, generator=g, dtype=torch.float64).tril()
    # Lag 1, head 0: the mean of every A[b, 0, t, t - 1].
    by_hand = torch.stack([noisy[b, 0, t, t - 1] for b in range(2) for t in range(1, 9)]).mean()
    assert toeplitz_fit(noisy)[0, 1].item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_learned_gate_takes_a_kernel_exactly_at_short_lags_and_in_its_basis_beyond():
    m = build_mixer("learned_gate", 32, n_heads=4, head_dim=8, kernel_len=40, short_len=6, n_decays=5).double()
    # A target that lies in the filter family: arbitrary short taps plus a mix of the EMA basis.
    g = torch.Generator().manual_seed(1)
    mix = torch.rand(4, 5, generator=g, dtype=torch.float64)
    target = mix @ ema_basis(m.decays, 40, torch.float64)
    target[:, :6] += torch.rand(4, 6, generator=g, dtype=torch.float64)
    m.fit_toeplitz(target)
    expected = target.repeat_interleave(8, dim=0)  # channel c serves head c // head_dim
    torch.testing.assert_close(m.kernel(40, torch.float64), expected, rtol=0, atol=1e-6)
    with pytest.raises(WavedistillError, match="a kernel per head"):
        m.fit_toeplitz(target[:3])


def test_eager_attention_is_restored_and_maps_are_causal_distributions():
    teacher = tiny_model("qwen3")
    ids = torch.randint(8, VOCAB, (2, 13), generator=torch.Generator().manual_seed(0))
    with eager_attention(teacher):
        maps = teacher(ids, use_cache=False, output_attentions=True).attentions
    assert teacher.config._attn_implementation == "sdpa"
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 13))
    assert maps[0].triu(1).abs().max() == 0
    kernels = attention_kernels(teacher, [0, 2], [ids])
    assert sorted(kernels) == [0, 2] and kernels[0].shape == (4, 13)


def test_fitted_filters_reproduce_attention_outputs_better_than_the_default_start():
    teacher = tiny_model("qwen3")
    student = copy.deepcopy(teacher)
    convert(student, "learned_gate", gate=False)
    ids = torch.randint(8, VOCAB, (4, 33), generator=torch.Generator().manual_seed(0))
    held_out = torch.randint(8, VOCAB, (4, 33), generator=torch.Generator().manual_seed(1))
    before = transfer_step(teacher, student, held_out)["loss"].item()
    kernels = attention_kernels(teacher, [0, 1, 2], [ids])
    for i, m in wave_attention_modules(student).items():
        m.mixer.fit_toeplitz(kernels[i])
    after = transfer_step(teacher, student, held_out)["loss"].item()
    assert after < 0.8 * before, (before, after)
