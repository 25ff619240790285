"""The handoff stage: the logged schedule, the learned convex gate, and a teacher-free result."""

import copy
import json

import pytest
import torch

from tests.conftest import VOCAB, tiny_model, tiny_run_config
from wavedistill.training.distill import run
from wavedistill.io import load_student
from wavedistill.surgery import add_handoff_gates, convert, set_handoff, wave_attention_modules


def test_learned_gate_is_convex_and_pinned_to_the_schedule_endpoints():
    teacher = tiny_model("llama")
    student = copy.deepcopy(teacher)
    convert(student, "learned_gate", layers=[0, 2])
    gates = add_handoff_gates(student)
    with torch.no_grad():
        for g, v in zip(gates, (2.5, -3.0)):
            g.fill_(v)
    for m in wave_attention_modules(student).values():
        for a in (0.0, 0.2, 0.5, 0.9, 1.0):
            m.handoff = a
            w = float(torch.as_tensor(m.handoff_share()).detach())
            assert a * a - 1e-7 <= w <= a * (2 - a) + 1e-7
            assert (w == 0.0) == (a == 0.0) and (a < 1.0 or w == pytest.approx(1.0))
    set_handoff(student, 0.0)
    ids = torch.randint(8, VOCAB, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(student(ids, use_cache=False).logits, teacher(ids, use_cache=False).logits)


@pytest.fixture(scope="module")
def handoff_run(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("handoff") / "run"
    cfg = tiny_run_config(tiny_teacher, out, stages=[{"kind": "handoff", "steps": 10, "mode": "sequential",
                                                      "ramp_frac": 0.6, "learned_gate": True}])
    return out, run(cfg)


def test_the_schedule_is_logged_and_hands_each_layer_over_in_turn(handoff_run):
    out, _ = handoff_run
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    a0 = [r["handoff_a_0"] for r in rows if "loss" in r]
    a1 = [r["handoff_a_1"] for r in rows if "loss" in r]
    assert a0[0] > 0 and a1[0] == 0.0  # layer 0 starts, layer 1 waits
    assert a0[2] == 1.0 and a1[2] == 0.0 and a1[3] > 0  # 6 ramp steps: 3 per layer
    assert a0[-4:] == [1.0] * 4 and a1[-4:] == [1.0] * 4  # the last 40 %: mixers alone
    assert all(x <= y for x, y in zip(a1, a1[1:]))


def test_the_result_is_teacher_free_and_loads_without_gates(handoff_run):
    out, metrics = handoff_run
    assert metrics["stages"][0]["trainable_params"]["handoff_gates"] == 2
    assert set(metrics["stages"][0]["tanh_gates_at_end"]) == {"layers.0.self_attn.handoff_logit",
                                                              "layers.1.self_attn.handoff_logit"}
    for folder in ("adapter", "checkpoint"):
        config = json.loads((out / folder / "adapter_config.json").read_text())
        assert config["unfrozen"] == [] and config["layers"] == [0, 1]
        student, _ = load_student(str(out / folder))
        assert all(m.handoff is None and m.handoff_logit is None for m in wave_attention_modules(student).values())
