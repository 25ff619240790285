"""Unit tests of the distill loop's pieces that need no model: hybrid layer choice and the lr schedule."""

import pytest

from wavedistill.training.config import DistillConfig
from wavedistill.training.distill import wave_layers
from wavedistill.training.loop import lr_schedule
from wavedistill.errors import WavedistillError


@pytest.mark.parametrize("changes,expected", [
    ({}, [0, 1, 2, 3, 4]),
    ({"keep_attention": [0, 3]}, [1, 2, 4]),
    ({"keep_attention_every": 2}, [1, 3]),  # keeps 0, 2, 4
    ({"keep_attention": [1], "keep_attention_every": 4}, [2, 3]),  # keeps 0, 1, 4
    ({"layers": [1, 2]}, [1, 2]),
], ids=["all", "keep-0-3", "every-2", "both", "explicit-layers"])
def test_wave_layers_removes_the_layers_kept_as_attention(changes, expected):
    assert wave_layers(DistillConfig(**changes), n_layers=5) == expected


@pytest.mark.parametrize("changes,needle", [
    ({"keep_attention": [7]}, "out of range"),
    ({"layers": [1, 2], "keep_attention": [2]}, "both in --layers and kept"),
    ({"keep_attention_every": 1}, "nothing to convert"),
], ids=["out-of-range", "conflict", "all-kept"])
def test_wave_layers_refuses_contradictions(changes, needle):
    with pytest.raises(WavedistillError, match=needle):
        wave_layers(DistillConfig(**changes), n_layers=5)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    import torch

    cfg = DistillConfig(warmup_steps=10, min_lr_ratio=0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = lr_schedule(opt, cfg, 110)
    values = []
    for _ in range(111):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert values[5] == pytest.approx(0.5) and values[10] == pytest.approx(1.0) and values[110] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(values[:10], values[1:11]))  # warm-up rises
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # then decays monotonically


RECIPE = [{"kind": "transfer", "steps": 4}, {"kind": "progressive", "order": "last_to_first", "steps_per_swap": 3},
          {"kind": "handoff", "steps": 6, "learned_gate": True, "mode": "sequential"}, {"kind": "kd", "steps": 4}]


@pytest.fixture(scope="module")
def uninterrupted(tiny_teacher, tmp_path_factory):
    from tests.conftest import tiny_run_config
    from wavedistill.training.distill import run

    out = tmp_path_factory.mktemp("recipe") / "run"
    metrics = run(tiny_run_config(tiny_teacher, out, stages=RECIPE, save_every=2, eval_every=2))
    return out, metrics


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [5, 11, 15, 18], ids=["progressive", "stage-boundary", "handoff", "kd"])
def test_a_recipe_resumed_after_a_crash_ends_exactly_where_an_uninterrupted_run_ends(
        uninterrupted, tiny_teacher, tmp_path, monkeypatch, kill_at):
    import json

    import torch
    from safetensors.torch import load_file

    import wavedistill.training.distill as d
    import wavedistill.training.loop as loop
    from tests.conftest import tiny_run_config

    out = tmp_path / "run"
    fast = loop.train_batch

    def dies(stream, batch_size, seq_len, seed, index):
        if index == kill_at:
            raise Killed
        return fast(stream, batch_size, seq_len, seed, index)

    monkeypatch.setattr(loop, "train_batch", dies)
    with pytest.raises(Killed):
        d.run(tiny_run_config(tiny_teacher, out, stages=RECIPE, save_every=2, eval_every=2))
    monkeypatch.setattr(loop, "train_batch", fast)
    metrics = d.run(tiny_run_config(tiny_teacher, out, stages=RECIPE, save_every=2, eval_every=2, resume=True))

    ref_out, ref = uninterrupted
    for folder in ("checkpoint", "adapter"):
        mine, theirs = load_file(out / folder / "adapter_model.safetensors"), load_file(
            ref_out / folder / "adapter_model.safetensors")
        assert mine.keys() == theirs.keys()
        for k in mine:
            torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-6, msg=f"{folder}/{k}")
    assert metrics["selected_step"] == ref["selected_step"] and metrics["kl"] == pytest.approx(ref["kl"], abs=1e-6)
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref_out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for a, b in zip(rows, ref_rows):
        assert a.get("loss", 0.0) == pytest.approx(b.get("loss", 0.0), rel=1e-5, abs=1e-7)


def test_bf16_trains_with_finite_losses_and_float16_on_cpu_is_refused_before_anything_is_written(tiny_teacher,
                                                                                                  tmp_path):
    import json

    from tests.conftest import tiny_run_config
    from wavedistill.training.distill import run

    out = tmp_path / "run"
    run(tiny_run_config(tiny_teacher, out, stages=[{"kind": "kd", "steps": 3}], dtype="bfloat16", eval_every=3))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(v == v and abs(v) < 1e4 for v in losses), losses
    # float16 needs loss scaling, which accelerate provides on CUDA only.
    with pytest.raises(WavedistillError, match="float16 needs a gradient scaler"):
        run(tiny_run_config(tiny_teacher, tmp_path / "fp16", dtype="float16"))
    assert not (tmp_path / "fp16").exists()


def test_reinit_draws_the_named_mixer_parts_afresh_and_keeps_the_rest_from_the_teacher():
    import torch

    from tests.conftest import tiny_model
    from wavedistill.training.distill import build_student
    from wavedistill.surgery import wave_attention_modules

    student = build_student(tiny_model("qwen3"), DistillConfig(wave_type="rotary_gla", reinit=["q_proj", "k_proj"]))
    for i, m in wave_attention_modules(student).items():
        attn = m.base_attn  # the teacher's attention, kept beside the mixer
        assert not torch.equal(m.mixer.q_proj.weight, attn.q_proj.weight)
        assert not torch.equal(m.mixer.k_proj.weight, attn.k_proj.weight)
        assert torch.equal(m.mixer.v_proj.weight, attn.v_proj.weight) and torch.equal(m.mixer.o_proj.weight,
                                                                                     attn.o_proj.weight)
    with pytest.raises(WavedistillError, match="no_such_part"):
        build_student(tiny_model("qwen3"), DistillConfig(wave_type="rotary_gla", reinit=["no_such_part"]))


def test_a_nan_loss_stops_the_run_with_advice_and_keeps_the_last_checkpoint(tiny_teacher, tmp_path, monkeypatch):
    import torch

    import wavedistill.training.stages.kd as kd
    from tests.conftest import tiny_run_config
    from wavedistill.training.distill import run
    from wavedistill.errors import TrainingError

    real = kd.kd_loss_chunked
    calls = {"n": 0}

    def goes_nan(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == 3:
            out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(kd, "kd_loss_chunked", goes_nan)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss became nan at step 3 .* lower the stage's lr"):
        run(tiny_run_config(tiny_teacher, out, stages=[{"kind": "kd", "steps": 5}], save_every=2, eval_every=2))
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 2, "the checkpoint written before the NaN is the one kept"
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    # Before the first checkpoint, the message says nothing is kept, and nothing is.
    calls["n"], early = 0, tmp_path / "early"
    with pytest.raises(TrainingError, match="no checkpoint was written yet, so nothing is kept"):
        run(tiny_run_config(tiny_teacher, early, stages=[{"kind": "kd", "steps": 5}], save_every=4, eval_every=4))
    assert not early.exists()
