"""``wavedistill bench`` on tiny sizes: every cell runs, the tables have their ratios, and decoding is O(1)."""

import json

import torch

from tests.test_cli import ok, wavedistill
from wavedistill.bench_decode import measure_layer, measure_model


def test_training_bench_tabulates_every_mixer_against_attention(tmp_path):
    ok(wavedistill("bench", "--mixers", "rotary_gla", "--seq-lens", "16,32", "--d-model", 32,
                   "--repeats", 1, "--output-dir", tmp_path))
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["mixer"], r["seq_len"]) for r in rows] == [(m, t) for m in ("attention", "rotary_gla") for t in (16, 32)]
    assert all(r["status"] == "ok" and r["fwdbwd_ms"] > 0 for r in rows)
    assert "× attention" in (tmp_path / "bench.md").read_text()


def test_decode_bench_runs_both_tables(tmp_path):
    ok(wavedistill("bench", "--decode", "--mixers", "learned_gate", "--prompts", "8", "--decode-tokens", 2,
                   "--layers", 1, "--d-model", 32, "--output-dir", tmp_path))
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    cells = {(r["table"], r["mixer"]) for r in rows if r["status"] == "ok"}
    assert cells == {("layer", "attention"), ("layer", "learned_gate"), ("model", "attention_teacher"),
                     ("model", "learned_gate")}
    assert (tmp_path / "decode.png").stat().st_size > 1000


def test_a_stateful_mixer_holds_the_same_state_whatever_the_prompt_length():
    # What makes decoding O(1): the state after 64 tokens is as big as after 8; attention's cache grows.
    torch.set_num_threads(1)
    for name, grows in (("learned_gate", False), ("rotary_gla", False), ("attention", True)):
        short, long = (measure_layer(name, 32, p, 2)["state_mb"] for p in (8, 64))
        assert (long > short) == grows, f"{name}: state {short} MB after 8 tokens, {long} MB after 64"
    short, long = (measure_model("learned_gate", 32, 1, p, 2)["state_mb"] for p in (8, 64))
    assert long - short < 1e-3, "a converted model's cache holds only the state and the 4-byte dummy keys"
