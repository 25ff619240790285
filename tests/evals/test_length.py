"""Perplexity / KL by position over growing windows, and decode time, on a tiny converted model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_model
from wavedistill.errors import WavedistillError
from wavedistill.evals import length
from wavedistill.evaluate import attention_zeroed
from wavedistill.kd.losses import kl_teacher_student
from wavedistill.evals.runs import RunModels
from wavedistill.surgery import TeacherView, convert

NAMES = ["teacher", "no_mixing", "student"]


@pytest.fixture(scope="module")
def models():
    student = tiny_model("llama", max_position_embeddings=64)
    convert(student, "learned_gate")
    return RunModels(student.eval(), TeacherView(student), None, {}, None)


def test_buckets_cover_every_position_once():
    for L in (2, 64, 65, 100, 300):
        edges = length.buckets(L)
        covered = [p for lo, hi in edges for p in range(lo, hi + 1)]
        assert covered == list(range(1, L))
    assert length.buckets(300) == [(1, 64), (65, 128), (129, 256), (257, 299)]
    assert length.default_lengths(256, 512) == [256, 512, 1024]
    assert length.default_lengths(32, None) == [32, 64, 128]


def test_profile_matches_a_direct_computation(models):
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 101, (3 * 128 + 5,), generator=g)
    out = length.position_profile(models, stream, NAMES, [128], context=64, batch_size=2)
    row = out["lengths"]["128"]
    assert row["windows"] == 3 and row["buckets"] == ["1-64", "65-127"]
    ids = stream[: 3 * 128].view(3, 128)
    with torch.no_grad():
        t = models.teacher(ids, use_cache=False).logits.double()
        s = models.student(ids, use_cache=False).logits.double()
        with attention_zeroed(models.teacher):
            z = models.teacher(ids, use_cache=False).logits.double()
    for name, logits in (("teacher", t), ("student", s), ("no_mixing", z)):
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        for b, (lo, hi) in enumerate([(1, 64), (65, 127)]):
            assert row["ppl"][name][b]["value"] == pytest.approx(math.exp(loss[:, lo - 1: hi].mean().item()),
                                                                 rel=1e-5)
    kl = kl_teacher_student(t[:, :-1], s[:, :-1])
    assert row["kl"][0]["value"] == pytest.approx(kl[:, :64].mean().item(), rel=1e-4)
    assert row["kl"][1] is None  # past the teacher's context (64) it is no reference


def test_profile_refuses_lengths_it_cannot_score(models):
    stream = torch.arange(50) % 101
    with pytest.raises(WavedistillError, match="fewer than one window of 64"):
        length.position_profile(models, stream, NAMES, [64], context=64)
    with pytest.raises(WavedistillError, match="no next-token target"):
        length.position_profile(models, stream, NAMES, [1], context=64)


def test_decode_speed_times_every_length_through_the_cache(models):
    stream = torch.arange(200) % 101
    out = length.decode_speed(models, stream, ["teacher", "student"], [16, 48], decode_tokens=3)
    for name in ("teacher", "student"):
        cells = out["ms_per_token"][name]
        assert set(cells) == {"16", "48"}
        assert all(0 < c["min"] <= c["median"] <= c["max"] for c in cells.values())
    with pytest.raises(WavedistillError, match="fewer than a prompt of 500"):
        length.decode_speed(models, stream, ["student"], [500])
