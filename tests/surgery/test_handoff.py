"""Parallel hand-off: (1 - a) * original attention + a * mixer in the converted layers."""

import copy

import pytest
import torch

from tests.conftest import VOCAB, assert_causal, tiny_model
from wavedistill.errors import SurgeryError
from wavedistill.surgery import convert, set_handoff

T = 29


def ids(B: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(8, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def teacher_and_student(family: str = "qwen3", mixer: str = "learned_gate"):
    teacher = tiny_model(family)
    student = copy.deepcopy(teacher)
    convert(student, mixer, layers=[0, 2])
    with torch.no_grad():  # move the mixers away from their init so "equals the teacher" means something
        for p in student.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return teacher, student.eval()


@pytest.mark.parametrize("family", ["qwen3", "llama", "gemma3_text"])
def test_handoff_zero_is_exactly_the_teacher(family):
    teacher, student = teacher_and_student(family)
    set_handoff(student, 0.0)
    x = ids()
    with torch.no_grad():
        assert torch.equal(student(x, use_cache=False).logits, teacher(x, use_cache=False).logits)
        assert torch.equal(student(x).logits, teacher(x).logits)  # with a cache, too


def test_handoff_one_is_the_mixer_alone():
    _, student = teacher_and_student()
    x = ids()
    with torch.no_grad():
        alone = student(x, use_cache=False).logits
        set_handoff(student, 1.0)
        assert torch.equal(student(x, use_cache=False).logits, alone)


def test_handoff_blend_is_causal_and_cached_generation_matches_uncached():
    _, student = teacher_and_student()
    set_handoff(student, 0.5)
    student.double()
    assert_causal(lambda x: student(x, use_cache=False).logits, ids(), vocab=VOCAB)
    prompt = ids(1)[:, :6]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=7)
    assert torch.equal(student.generate(prompt, use_cache=True, **kw), student.generate(prompt, use_cache=False, **kw))


def test_handoff_trains_the_mixer_only_through_its_share():
    _, student = teacher_and_student()
    set_handoff(student, 0.25)
    student(ids(), use_cache=False).logits.square().mean().backward()
    mixer_grads = [p.grad for n, p in student.named_parameters() if ".mixer." in n]
    assert all(g is not None and g.abs().sum() > 0 for g in mixer_grads)
    assert all(p.grad is None for n, p in student.named_parameters() if ".base_attn." in n)  # frozen


@pytest.mark.parametrize("a,layers", [(1.5, None), (-0.1, None), (0.5, [1])],
                         ids=["above-1", "below-0", "not-converted"])
def test_bad_handoff_requests_are_refused(a, layers):
    _, student = teacher_and_student()
    with pytest.raises(SurgeryError):
        set_handoff(student, a, layers=layers)
