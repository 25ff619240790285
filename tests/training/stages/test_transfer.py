"""Attention-output transfer: one teacher forward trains every converted layer at once."""

import copy

import pytest
import torch

from tests.conftest import VOCAB, tiny_model
from wavedistill.errors import WavedistillError
from wavedistill.surgery import convert
from wavedistill.training.stages.transfer import record_attention, transfer_loss, transfer_step


def batch(seed: int, B: int = 4, T: int = 33) -> torch.Tensor:
    return torch.randint(8, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def pair(mixer: str, **kw):
    teacher = tiny_model("qwen3")
    student = copy.deepcopy(teacher)
    convert(student, mixer, layers=[0, 1, 2], **kw)
    return teacher, student


def test_full_window_frequency_band_starts_with_zero_transfer_loss():
    # With the teacher's q/k/v/o, a window covering the sequence and a zero FFT branch, each mixer
    # computes its layer's attention exactly, so the transfer target is already met.
    teacher, student = pair("frequency_band", window=64)
    out = transfer_step(teacher, student, batch(0))
    assert out["loss"].item() < 1e-10
    assert sorted(k for k in out if k.startswith("layer_")) == ["layer_0", "layer_1", "layer_2"]


def test_transfer_training_lowers_the_loss_of_every_layer():
    teacher, student = pair("learned_gate")
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    first = transfer_step(teacher, student, batch(100))
    for step in range(60):
        loss = transfer_step(teacher, student, batch(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = transfer_step(teacher, student, batch(100))  # the same held-out batch as `first`
    for i in range(3):
        assert last[f"layer_{i}"] < 0.7 * first[f"layer_{i}"], i


def test_recording_needs_one_teacher_forward_and_removes_its_hooks():
    teacher = tiny_model("qwen3")
    calls = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    with record_attention(teacher, [0, 2]) as rec:
        teacher(batch(1), use_cache=False)
    assert sorted(rec) == [0, 2] and len(calls) == 1
    assert rec[0].output.shape == rec[0].hidden_states.shape == (4, 33, 64)
    assert not teacher.model.layers[0].self_attn._forward_hooks and not teacher.model.layers[2].self_attn._forward_hooks


def test_cosine_loss_ignores_scale_and_mse_does_not():
    x = torch.randn(2, 5, 8)
    assert transfer_loss(3 * x, x, "cosine").item() < 1e-6
    assert transfer_loss(3 * x, x, "mse").item() > 1.0
    with pytest.raises(WavedistillError, match="unknown transfer loss"):
        transfer_loss(x, x, "l1")
