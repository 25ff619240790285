"""A teacher spread over devices by accelerate's big-model loading: offloaded to disk, it trains the same student."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_run_config
from tests.cli.test_main import assert_one_line_error, wavedistill_here
from wavedistill.training.distill import run


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_a_teacher_offloaded_to_disk_trains_what_a_teacher_in_memory_trains(tiny_teacher, tmp_path):
    common = dict(stages=[{"kind": "transfer", "steps": 2}, {"kind": "kd", "steps": 2}], eval_every=2)
    ref = run(tiny_run_config(tiny_teacher, tmp_path / "ref", **common))
    # A 60 KB cap on CPU memory leaves the decoder layers on disk: their weights come in for each forward.
    off = run(tiny_run_config(tiny_teacher, tmp_path / "off", teacher_device_map="auto",
                              teacher_max_memory={"cpu": "60KB"}, **common))
    assert _losses(tmp_path / "off") == pytest.approx(_losses(tmp_path / "ref"), rel=1e-5)
    assert off["kl"] == pytest.approx(ref["kl"], rel=1e-5)
    assert not (tmp_path / "off" / "offload").exists(), "the offloaded copy is removed at the end"


def test_a_device_map_naming_a_missing_device_is_a_one_line_error(tiny_teacher, tmp_path):
    out = tmp_path / "out"
    proc = wavedistill_here("distill", "--teacher", tiny_teacher["teacher"], "--data", tiny_teacher["corpus"],
                            "--output-dir", out, "--max-steps", 2, "--seq-len", 32, "--batch-size", 4,
                            "--teacher-device-map", '{"model": "cuda:3"}')
    assert_one_line_error(proc, "cuda:3", "available: cpu, disk")
    assert not out.exists()
