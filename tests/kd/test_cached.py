"""The KD loss from an offline teacher cache's top-k targets: the chunked loss equals its dense reference (loss
and gradient), matches its definition on probabilities, and with k = V (every token cached) equals the ordinary
KD loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wavedistill.kd.cached import cached_kd_loss, cached_kd_loss_dense, teacher_targets
from wavedistill.kd.chunked import kd_loss_chunked
from wavedistill.kd.engine import DIVERGENCES
from wavedistill.kd.losses import kd_loss

from tests.kd.same_as_dense import assert_same_as_dense


def _case(seed: int = 0, B: int = 2, T: int = 9, V: int = 37, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(B, T, V, generator=g)).requires_grad_(True)
    t = 3 * torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[-1, :3] = False
    return s, t, ids, mask, teacher_targets(t, k)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_cached_loss_equals_its_dense_reference_and_gradient(kind, chunk):
    s, _, ids, mask, targets = _case()
    kw = dict(kl_weight=0.7, ce_weight=0.3, mask=mask, divergence_kind=kind)
    dense = cached_kd_loss_dense(s, ids, *targets, **kw)
    chunked = cached_kd_loss(s, ids, *targets, chunk=chunk, **kw)
    assert_same_as_dense(chunked, dense, s)


def test_the_cached_forward_kl_is_the_kl_of_the_distributions_coarsened_to_k_tokens_and_a_rest():
    s, t, ids, _, (top_ids, top_logp, rest) = _case(B=1, T=1, V=6, k=2)
    p, q = F.softmax(t[0, 0].double(), -1), F.softmax(s[0, 0].detach().double(), -1)
    chosen = top_ids[0, 0].tolist()
    pc = [p[i].item() for i in chosen] + [1 - sum(p[i].item() for i in chosen)]
    qc = [q[i].item() for i in chosen] + [1 - sum(q[i].item() for i in chosen)]
    expected = sum(a * math.log(a / b) for a, b in zip(pc, qc))
    got = cached_kd_loss(s, ids, top_ids, top_logp, rest, kl_weight=1.0, ce_weight=0.0)
    assert got["kl"].item() == pytest.approx(expected, rel=1e-5)
    assert got["kl"].item() <= kd_loss(s, t, ids)["kl"].item()  # coarsening never increases a divergence


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_with_every_token_cached_the_loss_is_the_ordinary_kd_loss(kind):
    s, t, ids, mask, _ = _case()
    targets = teacher_targets(t, t.shape[-1])  # k = V: the rest bucket is empty
    assert torch.isinf(targets[2]).all()
    kw = dict(kl_weight=0.7, ce_weight=0.3, mask=mask)
    cached = cached_kd_loss(s, ids, *targets, divergence_kind=kind, chunk=4, **kw)
    reference = (kd_loss(s, t, ids, **kw) if kind == "forward_kl"
                 else kd_loss_chunked(s, t, ids, divergence_kind=kind, **kw))
    for key in ("loss", "kl", "ce"):
        torch.testing.assert_close(cached[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    (g_cached,) = torch.autograd.grad(cached["loss"], s)
    (g_ref,) = torch.autograd.grad(reference["loss"], s)
    torch.testing.assert_close(g_cached, g_ref, rtol=1e-4, atol=1e-6)
