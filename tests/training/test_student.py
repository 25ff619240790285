"""A smaller student: presets build the stated sizes, weight selection copies the mapped teacher tensors'
leading indices, a student equal to its teacher computes the teacher, bad shapes are one-line errors."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_FAMILIES, tiny_model
from wavedistill.errors import WavedistillError
from wavedistill.training.student import build_student_model, shared_vocab, student_config
from wavedistill.training.student_spec import PRESETS, StudentSpec


def _teacher(family="llama", **kw):
    # 6 layers, hidden 64, 4 heads / 2 KV heads of dim 16, MLP 128
    return tiny_model(family, num_hidden_layers=6, **kw)


@pytest.mark.parametrize("preset,expected", [
    ("standard", dict(num_hidden_layers=6, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128)),
    ("compressed", dict(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=64)),
    ("tiny", dict(num_hidden_layers=3, hidden_size=24, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=48)),
])
def test_presets_build_the_stated_sizes(preset, expected):
    teacher = _teacher()
    config = student_config(teacher.config, StudentSpec(preset=preset))
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.head_dim == 16, "the head dimension is kept"
    student = build_student_model(teacher, StudentSpec(preset=preset), list(range(expected["num_hidden_layers"])))
    assert student.config.num_hidden_layers == expected["num_hidden_layers"]
    assert student.model.embed_tokens.weight.shape == (teacher.config.vocab_size, expected["hidden_size"])
    assert sum(p.numel() for p in student.parameters()) <= sum(p.numel() for p in teacher.parameters())


def test_explicit_sizes_override_the_preset():
    config = student_config(_teacher().config, StudentSpec(preset="tiny", layers=5, heads=4, kv_heads=2))
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (5, 4, 2)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_full_size_student_with_the_identity_map_computes_its_teacher(family):
    teacher = tiny_model(family)
    student = build_student_model(teacher, StudentSpec(), list(range(teacher.config.num_hidden_layers)))
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12))
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits, rtol=1e-5, atol=1e-5)


def test_weight_selection_takes_the_mapped_layer_and_the_leading_indices():
    teacher = _teacher("qwen3")
    student = build_student_model(teacher, StudentSpec(layers=2, hidden_size=32, heads=2, kv_heads=1,
                                                       intermediate_size=40), [1, 5])
    t, s = teacher.model, student.model
    torch.testing.assert_close(s.layers[1].self_attn.q_proj.weight, t.layers[5].self_attn.q_proj.weight[:32, :32])
    torch.testing.assert_close(s.layers[0].mlp.down_proj.weight, t.layers[1].mlp.down_proj.weight[:32, :40])
    torch.testing.assert_close(s.layers[0].self_attn.k_norm.weight, t.layers[1].self_attn.k_norm.weight)
    torch.testing.assert_close(s.embed_tokens.weight, t.embed_tokens.weight[:, :32])
    torch.testing.assert_close(student.lm_head.weight, teacher.lm_head.weight[:, :32])


def test_random_init_is_not_the_teacher():
    teacher = _teacher()
    student = build_student_model(teacher, StudentSpec(layers=2, init="random"), [2, 5])
    assert not torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)


@pytest.mark.parametrize("spec,message", [
    (StudentSpec(preset="huge"), "unknown student preset 'huge'; known: standard, compressed, tiny"),
    (StudentSpec(hidden_size=128), "--student-hidden-size 128: a student has 1 to 64"),
    (StudentSpec(layers=7), "--student-layers 7: a student has 1 to 6"),
    (StudentSpec(heads=4, kv_heads=3), "--student-kv-heads 3: a student has 1 to 2"),
    (StudentSpec(heads=3, kv_heads=2), "--student-kv-heads 2 must divide --student-heads 3"),
    (StudentSpec(init="copy"), "unknown student init 'copy'; known: teacher, random"),
])
def test_impossible_students_are_one_line_errors(spec, message):
    with pytest.raises(WavedistillError, match=message):
        student_config(_teacher().config, spec)


def test_a_shape_the_model_family_rejects_is_a_one_line_error_before_anything_is_built():
    # Llama derives its head size from hidden_size / heads, so these are refused by transformers' own check,
    # which used to surface only when the student folder was saved (a traceback and a stray student_init.tmp/).
    teacher = tiny_model("llama")
    for spec in (StudentSpec(hidden_size=30), StudentSpec(heads=3, kv_heads=1)):
        with pytest.raises(WavedistillError, match="not a valid llama config: .*hidden size .* multiple"):
            student_config(teacher.config, spec)


def test_presets_are_never_larger_than_the_teacher():
    assert all(w <= 1 and d <= 1 for w, d in PRESETS.values())


class _Tok:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_the_vocabulary_check_slices_padded_rows_and_refuses_other_tokenizers():
    tok = _Tok({"a": 0, "b": 1, "c": 2})
    assert shared_vocab(tok, _Tok(tok.vocab), 3, 3) == 3
    assert shared_vocab(tok, _Tok(tok.vocab), 8, 4) == 4, "padded rows beyond the tokenizer are cut"
    with pytest.raises(WavedistillError, match="differs from the teacher's"):
        shared_vocab(tok, _Tok({"a": 0, "b": 1, "d": 2}), 3, 3)
