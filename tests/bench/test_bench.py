"""``wavedistill bench``: the cells measure what they say, the tables carry their ratios, decoding is O(1)."""

import json

import torch

from tests.cli.test_main import ok, wavedistill
from wavedistill.bench.train import markdown_table, measure
from wavedistill.bench.decode import measure_layer, measure_model


def test_training_bench_measures_each_cell_and_tabulates_the_ratio_to_attention():
    torch.set_num_threads(1)
    rows = [{"mixer": m, "seq_len": 16, "d_model": 32, "batch": 1, "status": "ok", **measure(m, 32, 16, 1, "cpu", 1)}
            for m in ("attention", "rotary_gla")]
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] >= r["fwd_ms"] * 0.5 for r in rows)
    table = markdown_table(rows, {"device": "cpu", "gpu": None, "cpu": "x", "torch": torch.__version__, "threads": 1})
    ratio = rows[0]["fwdbwd_ms"] / rows[1]["fwdbwd_ms"]
    assert "speed-up vs attention" in table and "| rotary_gla | 16 |" in table and f"{ratio:.1f}" in table


def test_decode_bench_cli_runs_both_tables(tmp_path):
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
