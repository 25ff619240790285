"""The teacher as a view of the student: one copy of the base weights, and exactly the base model's outputs."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import tiny_model
from tests.surgery.test_convert import greedy, jitter_mixers, rand_ids
from wavedistill.training.config import DistillConfig
from wavedistill.training.distill import build_student
from wavedistill.surgery import TeacherView, as_teacher, decoder_layers


@pytest.mark.parametrize("recovery", [{}, {"lora_mlp": 4}, {"unfreeze_mlps": True}], ids=["mixers", "lora", "mlps"])
def test_the_view_computes_the_base_model_bit_for_bit(recovery):
    base = tiny_model("qwen3")
    reference = copy.deepcopy(base)
    ids = rand_ids(2, 17)
    with torch.no_grad():
        expected = reference(ids).logits
        student = build_student(base, DistillConfig(wave_type="learned_gate", layers=[0, 2], **recovery))
        jitter_mixers(student)
        for p in student.parameters():  # train the recovery parts a little too
            if p.requires_grad:
                p.add_(0.05)
        teacher = TeacherView(student)
        assert torch.equal(teacher(ids).logits, expected)
        assert not torch.allclose(student(ids).logits, expected), "the student itself is not the teacher"
        # hidden states through the decoder view (what the transfer stage records) are the base's too
        assert torch.equal(teacher.get_decoder()(input_ids=ids).last_hidden_state,
                           reference.get_decoder()(input_ids=ids).last_hidden_state)
    assert student.training, "the view restores train mode"


def test_the_view_shares_every_base_weight_and_trains_only_float32_parts():
    base = tiny_model("qwen3").to(torch.bfloat16)
    shared = {n: p.data_ptr() for n, p in base.named_parameters()}
    student = build_student(base, DistillConfig(wave_type="rotary_gla", lora_mlp=2))
    assert student is base, "the student is the base model, converted in place: no copy"
    ptrs = {p.data_ptr() for p in student.parameters()}
    base_kept = [n for n in shared if shared[n] in ptrs]
    assert len(base_kept) >= len(shared) - 3 * 3, "every base weight is still there once (LoRA wraps the MLPs)"
    trainable = [p for p in student.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for p in student.parameters() if not p.requires_grad)
    with torch.no_grad():
        student(rand_ids(1, 9))  # float32 mixers and LoRA inside a bf16 model run without a dtype error
        TeacherView(student)(rand_ids(1, 9))


def test_the_view_generates_what_the_base_generates():
    base = tiny_model("qwen3")
    reference = copy.deepcopy(base)
    student = build_student(base, DistillConfig(wave_type="rotary_gla", layers=[0, 2]))
    jitter_mixers(student)
    prompt = rand_ids(2, 9)
    assert torch.equal(greedy(TeacherView(student), prompt), greedy(reference, prompt))


def test_as_teacher_returns_attention_maps_for_the_fit_stage():
    base = tiny_model("qwen3", attn_implementation="eager")
    student = build_student(base, DistillConfig(wave_type="learned_gate", layers=[0, 2]))
    with torch.no_grad(), as_teacher(student):
        maps = student(rand_ids(1, 7), output_attentions=True).attentions
    assert len(maps) == len(decoder_layers(student)) and all(m is not None for m in maps)
