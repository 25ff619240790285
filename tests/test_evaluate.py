"""Held-out metrics and the no-mixing baseline.

The teacher is the demo's tiny Qwen3, pre-trained for a few steps on the synthetic stories: a
random model is no better than "no mixing" (its ppl_no_mixing can be *lower* than ppl_teacher,
and gap_closed is then undefined), while a little training makes attention clearly useful.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from wavedistill.data import eval_windows, read_documents, split_documents
from wavedistill.cli.demo import build_tokenizer, train_teacher, write_corpus
from wavedistill.evaluate import attention_zeroed, compare
from wavedistill.surgery import convert, decoder_layers, mixer_parameters

N, T = 5, 24  # 5 windows with batch_size 2: the last batch is partial


@pytest.fixture(scope="module")
def teacher_and_windows(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    corpus = str(root / "stories.txt")
    write_corpus(corpus, n_stories=200, seed=0)
    train_teacher(str(root / "teacher"), corpus, steps=20, seed=0)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    splits = split_documents(read_documents(corpus), build_tokenizer(corpus), 0.05, 0.1)
    windows = eval_windows(splits.test, T, N)
    assert windows.shape == (N, T)
    return teacher, windows


@pytest.fixture(scope="module")
def student(teacher_and_windows):
    teacher, _ = teacher_and_windows
    s = copy.deepcopy(teacher)
    convert(s, "learned_gate")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move off the teacher-initialised point so the student really differs
        for p in mixer_parameters(s):
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return s.eval()


def test_teacher_against_itself_is_perfect(teacher_and_windows):
    teacher, windows = teacher_and_windows
    m = compare(teacher, teacher, windows, batch_size=2)
    assert m["top1_agreement"] == 1.0
    assert m["top5_overlap"] == 1.0
    assert m["teacher_top1_in_student_top5"] == 1.0
    assert abs(m["kl"]) < 1e-6
    assert m["ppl_student"] == m["ppl_teacher"]
    # gap_closed is only defined when mixing helps; the trained teacher must make it so.
    assert m["ppl_no_mixing"] > 1.2 * m["ppl_teacher"]
    assert m["gap_closed"] == pytest.approx(1.0, abs=1e-9)


def test_positions_and_targets_count_every_window(teacher_and_windows):
    teacher, windows = teacher_and_windows
    m = compare(teacher, teacher, windows, batch_size=2)
    assert m["positions"] == N * T  # every position is scored, including the partial last batch
    assert m["target_tokens"] == N * (T - 1)  # the last position of a window has no target


def test_metrics_match_a_direct_computation_and_do_not_depend_on_batch_size(teacher_and_windows, student):
    teacher, windows = teacher_and_windows
    m = compare(teacher, student, windows, batch_size=2)
    with torch.no_grad():
        t = teacher(windows, use_cache=False).logits.double()
        s = student(windows, use_cache=False).logits.double()
        with attention_zeroed(teacher):
            z = teacher(windows, use_cache=False).logits.double()

    def ppl(logits):
        return math.exp(F.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten()).item())

    def top5_overlap(a, b):  # |top5(a) & top5(b)| / 5 per position, with Python sets
        ia, ib = a.topk(5, -1).indices.flatten(0, 1).tolist(), b.topk(5, -1).indices.flatten(0, 1).tolist()
        return sum(len(set(x) & set(y)) / 5 for x, y in zip(ia, ib)) / len(ia)

    pt, ps, pz = F.log_softmax(t, -1), F.log_softmax(s, -1), F.log_softmax(z, -1)
    assert m["kl"] == pytest.approx((pt.exp() * (pt - ps)).sum(-1).mean().item(), rel=1e-4)
    assert m["top1_agreement"] == pytest.approx((t.argmax(-1) == s.argmax(-1)).double().mean().item())
    assert m["top5_overlap"] == pytest.approx(top5_overlap(t, s))
    assert m["teacher_top1_in_student_top5"] == pytest.approx(
        (s.topk(5, -1).indices == t.argmax(-1, keepdim=True)).any(-1).double().mean().item())
    assert m["no_mixing_kl"] == pytest.approx((pt.exp() * (pt - pz)).sum(-1).mean().item(), rel=1e-4)
    assert m["no_mixing_top5_overlap"] == pytest.approx(top5_overlap(t, z))
    assert m["ppl_teacher"] == pytest.approx(ppl(t), rel=1e-5)
    assert m["ppl_student"] == pytest.approx(ppl(s), rel=1e-5)
    assert m["ppl_no_mixing"] == pytest.approx(ppl(z), rel=1e-5)
    span = m["ppl_no_mixing"] - m["ppl_teacher"]
    assert m["gap_closed"] == pytest.approx((m["ppl_no_mixing"] - m["ppl_student"]) / span, rel=1e-9)
    # The student differs from the teacher, so these are real comparisons, not 1.0 by construction.
    assert m["kl"] > 1e-4 and m["top5_overlap"] < 1.0
    # Sums over positions, divided once at the end: the batch size cannot change any metric.
    whole = compare(teacher, student, windows, batch_size=N)
    for key in ("top1_agreement", "top5_overlap", "teacher_top1_in_student_top5", "kl", "ppl_teacher",
                "ppl_student", "ppl_no_mixing", "gap_closed", "no_mixing_kl", "no_mixing_top5_overlap"):
        assert whole[key] == pytest.approx(m[key], rel=1e-5), key


def test_scoring_in_small_forwards_and_position_chunks_changes_no_metric(teacher_and_windows, student, monkeypatch):
    # At a 151,936-token vocabulary scoring must not hold (B, T, V) float32 copies: forwards are capped at
    # SCORE_ELEMENTS logits and the metrics run over chunks of positions. Neither cap may change a number.
    import wavedistill.evaluate as ev

    teacher, windows = teacher_and_windows
    whole = compare(teacher, student, windows, batch_size=N)
    calls = []
    hook = teacher.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    V = teacher.config.vocab_size
    monkeypatch.setattr(ev, "SCORE_ELEMENTS", 2 * T * V)  # two windows per forward after the first
    monkeypatch.setattr(ev, "SCORE_CHUNK", 3 * V)  # three positions per metric chunk
    small = compare(teacher, student, windows, batch_size=N, with_baseline=True)
    hook.remove()
    assert max(calls) == 2 and sum(calls) == 2 * N  # teacher and baseline forwards, none over 2 windows
    for key, value in whole.items():
        assert small[key] == pytest.approx(value, rel=1e-6), key


def test_without_baseline_there_is_no_no_mixing_entry(teacher_and_windows):
    teacher, windows = teacher_and_windows
    m = compare(teacher, teacher, windows[:1], with_baseline=False)
    assert not {"ppl_no_mixing", "gap_closed", "no_mixing_kl", "no_mixing_top5_overlap"} & set(m)


@torch.no_grad()
def test_attention_zeroed_really_removes_token_mixing(teacher_and_windows):
    teacher, windows = teacher_and_windows
    ids = windows[:2]
    other = ids.clone()
    other[:, :-1] = windows[2:4, :-1]  # a different context before the same last token
    assert not torch.equal(ids[:, :-1], other[:, :-1])
    with attention_zeroed(teacher):
        a = teacher(ids, use_cache=False).logits[:, -1]
        b = teacher(other, use_cache=False).logits[:, -1]
    # With every attention output zero, a position sees only its own token (MLPs and norms are
    # per position), so the context cannot matter.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # With attention on, it does: the check above would catch a hook that did nothing.
    a_on = teacher(ids, use_cache=False).logits[:, -1]
    b_on = teacher(other, use_cache=False).logits[:, -1]
    assert (a_on - b_on).abs().max() > 1e-2


@torch.no_grad()
def test_attention_zeroed_removes_its_hooks(teacher_and_windows):
    teacher, windows = teacher_and_windows
    before = teacher(windows, use_cache=False).logits
    with attention_zeroed(teacher):
        during = teacher(windows, use_cache=False).logits
    after = teacher(windows, use_cache=False).logits
    assert (during - before).abs().max() > 1e-2
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert all(len(b.self_attn._forward_hooks) == 0 for b in decoder_layers(teacher))
    # ... also when the body raises.
    with pytest.raises(RuntimeError, match="boom"), attention_zeroed(teacher):
        raise RuntimeError("boom")
    assert all(len(b.self_attn._forward_hooks) == 0 for b in decoder_layers(teacher))
    torch.testing.assert_close(teacher(windows, use_cache=False).logits, before, rtol=0, atol=0)
