"""Attention-map matching: zero when the student is its teacher, equal to a naive per-row computation,
GQA group matching, and refused where the student has no softmax maps."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import tiny_model, tiny_run_config
from wavedistill.attention_maps import attention_map_loss, eager_attention, teacher_heads
from wavedistill.errors import WavedistillError
from wavedistill.student import StudentSpec, build_student_model


def _maps(model, ids):
    with eager_attention(model), torch.no_grad():
        return model(ids, output_attentions=True).attentions


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_the_loss_is_zero_when_the_student_is_its_teacher(kind):
    teacher = tiny_model("qwen3", num_hidden_layers=4)
    student = build_student_model(teacher, StudentSpec(layers=2), [1, 3])
    ids = torch.randint(0, teacher.config.vocab_size, (2, 10))
    t_maps, s_maps = _maps(teacher, ids), _maps(student, ids)
    assert attention_map_loss(t_maps, t_maps, [0, 1, 2, 3], kind).item() == pytest.approx(0.0, abs=1e-7)
    # a 2-layer student selected from layers 1 and 3 computes different maps in its layer 1 (its input differs)
    assert attention_map_loss(s_maps, t_maps, [1, 3], kind).item() > 1e-6


def test_the_kl_equals_a_naive_sum_over_each_query_row():
    g = torch.Generator().manual_seed(0)
    T = 5
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))

    def rand_maps(H):
        return torch.randn(2, H, T, T, generator=g).masked_fill(~causal, -math.inf).softmax(-1)

    s, t = rand_maps(2), rand_maps(4)
    mask = torch.tensor([[True] * T, [False, True, True, True, True]])
    naive, n = 0.0, 0
    for b in range(2):
        for q in range(T):
            if not mask[b, q]:
                continue
            per_head = []
            for h in range(2):
                tg = t[b, 2 * h:2 * h + 2, q].mean(0)  # group matching: the mean of teacher heads 2h, 2h + 1
                per_head.append(sum(tg[k] * math.log(tg[k] / s[b, h, q, k]) for k in range(q + 1)))
            naive += sum(per_head) / 2
            n += 1
    got = attention_map_loss((s,), (t,), [0], "kl", heads="group", mask=mask)
    assert got.item() == pytest.approx(float(naive) / n, rel=1e-5)


def test_head_and_group_matching_and_their_errors():
    t = torch.arange(6.0).view(1, 6, 1, 1).expand(1, 6, 2, 2)
    assert teacher_heads(t, 2, "head")[0, :, 0, 0].tolist() == [0.0, 1.0]
    assert teacher_heads(t, 2, "group")[0, :, 0, 0].tolist() == [1.0, 4.0]
    with pytest.raises(WavedistillError, match="the student has 8 heads, the teacher 6"):
        teacher_heads(t, 8, "head")
    with pytest.raises(WavedistillError, match="into 4 equal groups"):
        teacher_heads(t, 4, "group")


def test_a_student_run_matches_attention_maps_and_logs_the_loss(tiny_teacher, tmp_path):
    import json

    from wavedistill.distill import run

    out = tmp_path / "run"
    stages = [{"kind": "kd", "steps": 3, "attention_weight": 1.0, "attention_heads": "group"}]
    run(tiny_run_config(tiny_teacher, out, student={"layers": 1, "heads": 1, "kv_heads": 1}, stages=stages))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["attention_kl"] > 0 for r in rows if "stage_step" in r)


@pytest.mark.parametrize("student", [None, {"layers": 1, "mixer": "learned_gate"}])
def test_attention_maps_are_refused_without_softmax_attention_in_the_student(tiny_teacher, tmp_path, student):
    with pytest.raises(WavedistillError, match="attention_weight > 0 matches softmax attention maps"):
        tiny_run_config(tiny_teacher, tmp_path / "run", student=student,
                        stages=[{"kind": "kd", "steps": 1, "attention_weight": 1.0}])


def test_the_mse_is_the_mean_squared_error_over_each_row_then_heads_and_real_positions():
    g = torch.Generator().manual_seed(1)
    s, t = torch.rand(2, 2, 4, 4, generator=g), torch.rand(2, 2, 4, 4, generator=g)
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    naive = [((s[b, :, q] - t[b, :, q]) ** 2).mean().item() for b in range(2) for q in range(4) if mask[b, q]]
    got = attention_map_loss((s,), (t,), [0], "mse", heads="head", mask=mask)
    assert got.item() == pytest.approx(sum(naive) / len(naive), rel=1e-6)
