"""The kd stage: named loss weights, hidden-state loss, temperature schedules, all logged per step."""

import json

import pytest

from tests.conftest import tiny_run_config
from wavedistill.training.distill import run


def rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if "loss" in line]


def test_hidden_state_loss_and_dynamic_temperature_are_in_the_objective(tiny_teacher, tmp_path):
    out = tmp_path / "kd"
    run(tiny_run_config(tiny_teacher, out, stages=[{"kind": "kd", "steps": 4, "hidden_weight": 0.5,
                                                    "temperature_schedule": "dynamic", "temperature_max": 3.0,
                                                    "kl_weight": 1.0, "ce_weight": 0.0}]))
    for r in rows(out):
        assert r["feature_mse"] > 0 and 1.0 < r["temperature"] <= 3.0
        # loss = kl_weight * mean(T^2 KL) + hidden_weight * feature_mse with T^2 >= 1, so it exceeds their plain sum.
        assert r["loss"] >= r["kl"] + 0.5 * r["feature_mse"] - 1e-6


def test_linear_temperature_schedule_goes_from_start_to_end(tiny_teacher, tmp_path):
    out = tmp_path / "kd_t"
    run(tiny_run_config(tiny_teacher, out, stages=[{"kind": "kd", "steps": 5, "temperature": 3.0,
                                                    "temperature_schedule": "linear", "temperature_end": 1.0}]))
    temps = [r["temperature"] for r in rows(out)]
    assert temps == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0])


def test_transfer_then_kd_records_each_stage_with_its_throughput(tiny_teacher, tmp_path):
    metrics = run(tiny_run_config(tiny_teacher, tmp_path / "tkd", stages=[{"kind": "transfer", "steps": 3},
                                                                         {"kind": "kd", "steps": 3}]))
    assert metrics["recipe"] == ["transfer", "kd"] and metrics["steps"] == 6
    assert metrics["tokens_seen"] == 6 * 4 * 32
    for stage in metrics["stages"]:
        assert stage["tokens"] == 3 * 4 * 32 and stage["tokens_per_s"] > 0
    assert set(metrics["stages"][0]["val_layer_transfer_loss"]) == {"0", "1"}


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_a_divergence_other_than_forward_kl_is_logged_under_its_own_name(tiny_teacher, tmp_path, divergence):
    out = tmp_path / divergence
    run(tiny_run_config(tiny_teacher, out, stages=[{"kind": "kd", "steps": 2, "divergence": divergence,
                                                    "kl_weight": 1.0, "ce_weight": 0.0}]))
    for r in rows(out):
        assert "kl" not in r and r[divergence] > 0
        assert r["loss"] == pytest.approx(r[divergence], rel=1e-5)  # T = 1, kl_weight 1, nothing else
