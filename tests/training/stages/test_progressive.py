"""The progressive stage: swaps in configured order, fine-tunes between swaps, stops on a KL budget."""

import json

import pytest

from tests.conftest import tiny_run_config
from wavedistill.training.distill import run


def log_rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("progressive") / "run"
    cfg = tiny_run_config(tiny_teacher, out, stages=[{"kind": "progressive", "order": "last_to_first",
                                                      "steps_per_swap": 3}])
    return out, run(cfg)


def test_every_layer_is_swapped_in_order_with_fine_tuning_after_each(full):
    out, metrics = full
    stage = metrics["stages"][0]
    assert stage["order"] == [1, 0] and [s["group"] for s in stage["swaps"]] == [[1], [0]]
    assert stage["converted"] == [0, 1] and stage["kept_attention"] == [] and stage["steps"] == 6
    assert metrics["layers"] == [0, 1] and metrics["kept_attention_layers"] == []
    rows = log_rows(out)
    # After each swap the new student is scored before training on it (a row without a loss).
    assert [r["step"] for r in rows if "loss" not in r] == [0, 3]
    assert [r["stage_step"] for r in rows if "loss" in r] == [1, 2, 3, 1, 2, 3]


def test_selection_only_considers_the_final_architecture(full):
    _, metrics = full
    assert metrics["selected_step"] >= 3  # candidates of the one-layer student do not count


def test_a_kl_budget_undoes_the_swap_that_breaks_it_and_keeps_that_layer_as_attention(tiny_teacher, tmp_path):
    out = tmp_path / "budget"
    cfg = tiny_run_config(tiny_teacher, out, stages=[
        {"kind": "transfer", "steps": 3}, {"kind": "progressive", "order": "first_to_last", "steps_per_swap": 3,
                                           "kl_budget": 1e-9}])
    metrics = run(cfg)
    stage = metrics["stages"][1]
    assert stage["swaps"][0] == {"group": [0], "val_kl": pytest.approx(stage["swaps"][0]["val_kl"])}
    assert stage["swaps"][1]["undone"] is True  # the first group is always kept, the second broke the budget
    assert stage["converted"] == [0] and stage["kept_attention"] == [1]
    assert metrics["layers"] == [0] and metrics["kept_attention_layers"] == [1]
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["layers"] == [0]
    # Undoing restores the student of before the swap: its score equals the first group's final score.
    rows = log_rows(out)
    assert rows[-1]["val_kl"] == pytest.approx(stage["swaps"][0]["val_kl"], rel=1e-6)


def test_easiest_first_follows_the_held_out_transfer_losses(tiny_teacher, tmp_path):
    cfg = tiny_run_config(tiny_teacher, tmp_path / "easy", stages=[
        {"kind": "transfer", "steps": 3}, {"kind": "progressive", "order": "easiest_first", "steps_per_swap": 2}])
    stage = run(cfg)["stages"][1]
    losses = {int(k): v for k, v in stage["val_layer_transfer_loss"].items()}
    assert stage["order"] == sorted(losses, key=losses.get)
