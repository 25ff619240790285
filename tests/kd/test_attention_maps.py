"""Attention-map matching: zero when the student is its teacher, equal to a naive per-row computation,
GQA group matching, wave mixing matrices (MOHAWK stage 1), and refused where a mixer has no matrix."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import tiny_model, tiny_run_config
from wavedistill.kd.attention_maps import attention_map_loss, eager_attention, teacher_heads
from wavedistill.errors import WavedistillError
from wavedistill.training.student import build_student_model
from wavedistill.training.student_spec import StudentSpec


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

    from wavedistill.training.distill import run

    out = tmp_path / "run"
    stages = [{"kind": "kd", "steps": 3, "attention_weight": 1.0, "attention_heads": "group"}]
    run(tiny_run_config(tiny_teacher, out, student={"layers": 1, "heads": 1, "kv_heads": 1}, stages=stages))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["attention_kl"] > 0 for r in rows if "stage_step" in r)


@pytest.mark.parametrize("student", [None, {"layers": 1, "mixer": "learned_gate"}])
def test_attention_maps_are_refused_for_mixers_without_a_mixing_matrix(tiny_teacher, tmp_path, student):
    with pytest.raises(WavedistillError, match="'learned_gate' has none. Mixers with one: rotary_gla, s4d"):
        tiny_run_config(tiny_teacher, tmp_path / "run", student=student,
                        stages=[{"kind": "kd", "steps": 1, "attention_weight": 1.0}])


def test_a_kl_to_the_rows_of_a_matrix_that_are_not_distributions_is_refused(tiny_teacher, tmp_path):
    with pytest.raises(WavedistillError, match="'s4d'.s mixing matrix are not distributions.*attention_loss: mse"):
        tiny_run_config(tiny_teacher, tmp_path / "run", wave_type="s4d",
                        stages=[{"kind": "kd", "steps": 1, "attention_weight": 1.0}])


def test_a_wave_mixer_whose_matrix_is_the_teachers_attention_has_zero_map_loss():
    # rotary_gla's exact-exp diagnostic with the teacher's q / k and no decay (gate bias +60) computes
    # softmax attention itself: its mixing matrix is the teacher's map, and the loss is 0.
    from wavedistill.kd.attention_maps import mixer_inputs, mixing_matrices
    from wavedistill.surgery import convert, wave_attention_modules

    teacher = tiny_model("llama", attn_implementation="eager", num_hidden_layers=2)
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12))
    t_maps = _maps(teacher, ids)
    convert(teacher, "rotary_gla", feature_map="softmax")
    with torch.no_grad():
        for m in wave_attention_modules(teacher).values():
            m.mixer.decay_proj.bias.fill_(60.0)
        with mixer_inputs(teacher) as captured:
            teacher(ids)
        maps, heads, layers = mixing_matrices(teacher, captured)
    assert layers == [0, 1] and maps[0].shape == t_maps[0].shape
    assert attention_map_loss(maps, t_maps, layers, "kl", student_heads=heads).item() == pytest.approx(0, abs=1e-6)
    assert attention_map_loss(maps, t_maps, layers, "mse", window=5).item() == pytest.approx(0, abs=1e-10)


def test_per_channel_matrices_match_each_channel_to_its_heads_map_over_the_window():
    g = torch.Generator().manual_seed(2)
    t = torch.rand(1, 2, 6, 6, generator=g)
    s = torch.rand(1, 2 * 3, 6, 6, generator=g)  # 2 heads x 3 channels
    got = attention_map_loss((s,), (t,), [0], "mse", student_heads=[2], window=4)
    naive = torch.stack([((s[0, c, :4, :4] - t[0, c // 3, :4, :4]) ** 2).mean() for c in range(6)]).mean()
    assert got.item() == pytest.approx(naive.item(), rel=1e-6)


@pytest.mark.parametrize("wave_type,loss", [("s4d", "mse"), ("rotary_gla", "kl")])
def test_a_wave_student_matches_its_mixing_matrices_to_the_teachers_maps(tiny_teacher, tmp_path, wave_type, loss):
    import json

    from wavedistill.training.distill import run

    out = tmp_path / "run"
    stages = [{"kind": "kd", "steps": 3, "attention_weight": 1.0, "attention_loss": loss, "attention_window": 16}]
    run(tiny_run_config(tiny_teacher, out, wave_type=wave_type, stages=stages))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r[f"attention_{loss}"] > 0 for r in rows if "stage_step" in r)


def test_the_mse_is_the_mean_squared_error_over_each_row_then_heads_and_real_positions():
    g = torch.Generator().manual_seed(1)
    s, t = torch.rand(2, 2, 4, 4, generator=g), torch.rand(2, 2, 4, 4, generator=g)
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    naive = [((s[b, :, q] - t[b, :, q]) ** 2).mean().item() for b in range(2) for q in range(4) if mask[b, q]]
    got = attention_map_loss((s,), (t,), [0], "mse", heads="head", mask=mask)
    assert got.item() == pytest.approx(sum(naive) / len(naive), rel=1e-6)
