"""Short lab runs that must learn (loss far below chance), and the grok / memorisation step marks."""

import json
import math
from pathlib import Path

import pytest

from tests.conftest import SHARED_DIR
from wavedistill.lab.config import make_lab_config, resolve
from wavedistill.lab.train import step_marks, train_seed


def run(tmp_path, **changes) -> tuple[dict, list[dict]]:
    cfg = make_lab_config(changes)
    summary = train_seed(cfg, 0, str(tmp_path / "seed_0"))
    rows = [json.loads(line) for line in (tmp_path / "seed_0" / "train_log.jsonl").read_text().splitlines()]
    return summary, rows


def test_step_marks_need_accuracy_to_stay_up_until_the_end():
    rows = [{"step": s, "train_acc": tr, "test_acc": te} for s, tr, te in
            [(10, 0.5, 0.0), (20, 0.995, 0.2), (30, 1.0, 0.995), (40, 1.0, 0.9), (50, 1.0, 0.991), (60, 1.0, 1.0)]]
    assert step_marks(rows, 0.99) == (20, 50)  # the dip at 40 restarts the count
    assert step_marks(rows[:4], 0.99) == (20, None)


def test_modular_addition_memorises_then_groks_with_attention(tmp_path):
    # A small standard setup (p = 31, 70 % of pairs, full batch, weight decay 1) that groks in a few
    # hundred steps: memorisation first, then held-out accuracy >= 0.99 that stays there.
    summary, rows = run(tmp_path, task="modular", task_kwargs={"p": 31, "train_frac": 0.7}, mixer="attention",
                        d_model=64, d_mlp=128, steps=800, lr=3e-3, eval_every=20, stop_after_grok=40)
    assert summary["memorization_step"] is not None and summary["grok_step"] is not None
    assert summary["memorization_step"] < summary["grok_step"] <= summary["steps_run"] - 40
    assert summary["final_test_acc"] >= 0.99 and rows[-1]["test_loss"] < 0.1 * math.log(31)
    assert summary["steps_run"] < 800  # stopped 40 steps after grokking
    assert summary["params"] > 0 and summary["steps_per_s"] > 0 and summary["test_targets"] == 961 - 673


@pytest.mark.parametrize("mixer", ["learned_gate", "fnet"])
def test_modular_training_loss_falls_far_below_chance_for_wave_mixers(tmp_path, mixer):
    summary, rows = run(tmp_path, task="modular", task_kwargs={"p": 23, "train_frac": 0.6}, mixer=mixer, d_model=64,
                        d_mlp=128, steps=150, lr=3e-3, eval_every=50)
    assert rows[-1]["train_loss"] < 0.3 * math.log(23)


def test_copy_is_learned(tmp_path):
    summary, rows = run(tmp_path, task="copy", task_kwargs={"length": 6, "vocab": 8, "n_train": 2000, "n_test": 200},
                        mixer="attention", d_model=32, d_mlp=64, steps=300, lr=3e-3, eval_every=100)
    assert summary["final_test_acc"] > 0.6  # chance is 1/7


def test_mqar_recall_rises_above_chance_with_attention(tmp_path):
    summary, rows = run(tmp_path, task="mqar", task_kwargs={"seq_len": 32, "n_pairs": 4, "vocab": 32, "n_train": 3000,
                                                            "n_test": 200}, mixer="attention", d_model=32, d_mlp=64,
                        steps=300, lr=3e-3, eval_every=100)
    assert rows[-1]["test_loss"] < 0.8 * math.log(32)


def test_charlm_bits_per_character_fall_on_tiny_shakespeare(tmp_path):
    text = SHARED_DIR / "corpora" / "tinyshakespeare" / "input.txt"
    if not text.exists():
        pytest.skip("../shared/corpora/tinyshakespeare/input.txt not found: runs in CI where ../shared exists")
    summary, rows = run(tmp_path, task="charlm", task_kwargs={"data": str(text), "seq_len": 32, "max_val_windows": 64},
                        mixer="learned_gate", d_model=32, d_mlp=64, steps=200, batch_size=16, lr=3e-3, eval_every=100)
    assert rows[-1]["test_bpc"] < math.log2(65) - 2.0  # 65 characters: chance is 6.0 bits
    assert summary["final_test_bpc"] == rows[-1]["test_bpc"]


def test_classification_from_a_labelled_file_is_learned(tmp_path):
    path = Path(tmp_path) / "labels.jsonl"
    rows = [{"text": "".join("xyz"[(i * 7 + j) % 3] for j in range(8)) + ("!" if i % 2 else "?"),
             "label": "bang" if i % 2 else "quest"} for i in range(200)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    summary, _ = run(tmp_path, task="classify", task_kwargs={"data": str(path), "max_len": 16}, mixer="learned_gate",
                     d_model=32, d_mlp=64, steps=150, lr=3e-3, eval_every=50)
    assert summary["final_test_acc"] > 0.9


def test_task_defaults_fill_what_the_user_left_open():
    r = resolve(make_lab_config({"task": "modular"}))
    assert (r.d_model, r.n_layers, r.n_heads, r.d_mlp) == (128, 1, 4, 512)
    assert (r.lr, r.weight_decay, r.beta2, r.batch_size) == (1e-3, 1.0, 0.98, 0)
    assert r.task_kwargs == {} and resolve(make_lab_config({"task": "modular", "lr": 3e-3})).lr == 3e-3
