"""The chunked KD loss equals the dense one (loss and gradient), for every divergence, mask and temperature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wavedistill.errors import WavedistillError
from wavedistill.kd.chunked import kd_loss_chunked
from wavedistill.kd.engine import DIVERGENCES, divergence
from wavedistill.kd.losses import kd_loss

from tests.kd.same_as_dense import assert_same_as_dense


def _case(seed: int = 0, B: int = 2, T: int = 9, V: int = 37):
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(B, T, V, generator=g)).requires_grad_(True)
    t = 3 * torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, :3] = False
    return s, t, ids, mask


@pytest.mark.parametrize("temperature", [1.0, 2.5, "per-position"])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_forward_kl_equals_the_dense_loss_and_gradient(temperature, chunk):
    s, t, ids, mask = _case()
    if temperature == "per-position":
        temperature = 1 + torch.rand(2, 9, generator=torch.Generator().manual_seed(1))
    dense = kd_loss(s, t, ids, temperature=temperature, kl_weight=0.7, ce_weight=0.3, mask=mask)
    chunked = kd_loss_chunked(s, t, ids, temperature=temperature, kl_weight=0.7, ce_weight=0.3, mask=mask, chunk=chunk)
    assert_same_as_dense(chunked, dense, s)


def test_backward_scales_the_forward_gradient_buffer_in_place_instead_of_allocating_another():
    s, t, ids, mask = _case(seed=7)
    out = kd_loss_chunked(s, t, ids, mask=mask, chunk=4)
    (buffer,) = out["loss"].grad_fn.saved_tensors  # (N, V): the gradient written chunk by chunk in forward
    (g,) = torch.autograd.grad(2.5 * out["loss"], s, retain_graph=True)
    dense = kd_loss(s, t, ids, mask=mask)["loss"]
    torch.testing.assert_close(g, torch.autograd.grad(2.5 * dense, s)[0], rtol=1e-4, atol=1e-7)
    assert g.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr(), "no second (N, V) buffer"
    with pytest.raises(WavedistillError, match="backpropagated twice"):
        torch.autograd.grad(out["loss"], s)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_every_divergence_matches_its_definition_on_probabilities(kind):
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.6, 0.3, 0.1])
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a.tolist(), b.tolist()))  # noqa: E731
    m = (p + q) / 2
    expected = {"forward_kl": kl(p, q), "reverse_kl": kl(q, p), "jsd": 0.5 * kl(p, m) + 0.5 * kl(q, m)}[kind]
    assert divergence(p.log(), q.log(), kind).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd"])
def test_other_divergences_have_the_gradient_of_their_dense_form(kind):
    s, t, ids, mask = _case(seed=3)
    out = kd_loss_chunked(s, t, ids, temperature=2.0, kl_weight=1.0, ce_weight=0.0, mask=mask, divergence_kind=kind,
                          chunk=5)
    dense_div = divergence(F.log_softmax(t / 2.0, -1), F.log_softmax(s / 2.0, -1), kind)  # (B, T)
    dense = 4.0 * (dense_div * mask).sum() / mask.sum()
    torch.testing.assert_close(out["loss"], dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out["loss"], s)[0], torch.autograd.grad(dense, s)[0], rtol=1e-4,
                               atol=1e-7)


def test_bf16_logits_get_a_bf16_gradient_close_to_the_float32_one():
    s, t, ids, mask = _case(seed=5)
    ref = torch.autograd.grad(kd_loss_chunked(s, t, ids, mask=mask)["loss"], s)[0]
    s16 = s.detach().bfloat16().requires_grad_(True)
    g16 = torch.autograd.grad(kd_loss_chunked(s16, t.bfloat16(), ids, mask=mask, chunk=4)["loss"], s16)[0]
    assert g16.dtype == torch.bfloat16
    torch.testing.assert_close(g16.float(), ref, rtol=0.05, atol=2e-4)


def test_unknown_divergence_is_refused():
    s, t, ids, _ = _case()
    with pytest.raises(WavedistillError, match="unknown divergence 'kl2'"):
        kd_loss_chunked(s, t, ids, divergence_kind="kl2")


def test_the_loss_bench_measures_both_losses_and_skips_a_dense_loss_that_cannot_fit(tmp_path):
    from types import SimpleNamespace

    from wavedistill.bench.loss import measure, run_loss_bench

    small = measure("chunked", 64, 1000)
    assert small["peak_mb"] >= small["peak_without_grad_mb"] and small["grad_mb"] == 64 * 1000 * 2 / 2**20
    rows = run_loss_bench(SimpleNamespace(loss_positions=64, loss_vocab=1000, memory_limit_gb=1e-9,
                                          output_dir=str(tmp_path)))
    assert rows[0]["status"].startswith("skipped: estimated") and rows[1]["status"] == "ok"
    assert "chunked" in (tmp_path / "loss.md").read_text()


@pytest.mark.parametrize("chunk", [3, 1000])
def test_label_smoothing_matches_torch_cross_entropy_in_both_losses(chunk):
    s, t, ids, mask = _case(seed=9)
    ref_ce = F.cross_entropy(s[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none", label_smoothing=0.2)
    ce_mask = (mask[:, :-1] & mask[:, 1:]).flatten()
    ref = 0.5 * (ref_ce * ce_mask).sum() / ce_mask.sum()  # kl_weight 0: the CE term alone
    (ref_grad,) = torch.autograd.grad(ref, s, retain_graph=True)
    for out in (kd_loss(s, t, ids, kl_weight=0.0, ce_weight=0.5, mask=mask, label_smoothing=0.2),
                kd_loss_chunked(s, t, ids, kl_weight=0.0, ce_weight=0.5, mask=mask, label_smoothing=0.2, chunk=chunk)):
        torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(out["loss"], s)[0], ref_grad, rtol=1e-4, atol=1e-7)
        plain = F.cross_entropy(s[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        torch.testing.assert_close(out["ce"], (plain * ce_mask).sum() / ce_mask.sum(), msg="logged CE is plain CE")
