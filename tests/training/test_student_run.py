"""A run with a separate, smaller student: trains through the kd stage, saves a Hugging Face folder that
``from_pretrained`` loads, resumes exactly after a crash, is scored against its real teacher by ``eval``,
and refuses settings that only mean something for in-place conversion."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_run_config
from wavedistill.errors import WavedistillError
from wavedistill.training.student_spec import StudentSpec

STUDENT = {"preset": "compressed"}  # of the tiny 2-layer, hidden-32 Qwen3: 1 layer, hidden 16, 1 / 1 heads


@pytest.fixture(scope="module")
def student_run(tiny_teacher, tmp_path_factory):
    from wavedistill.training.distill import run

    out = tmp_path_factory.mktemp("student") / "run"
    metrics = run(tiny_run_config(tiny_teacher, out, student=STUDENT, max_steps=6, save_every=2, eval_every=2))
    return out, metrics


def test_the_student_has_the_preset_shape_and_saves_as_a_hugging_face_folder(student_run, tiny_teacher):
    from transformers import AutoModelForCausalLM

    from wavedistill.io import load_student

    out, metrics = student_run
    assert metrics["student"] | {"params": 0} == {"layers": 1, "hidden_size": 16, "heads": 1, "kv_heads": 1,
                                                  "intermediate_size": 32, "layer_map": [1], "mixer": "attention",
                                                  "params": 0}
    saved = yaml.safe_load((out / "config.yaml").read_text())["student"]
    # the whole spec, with the resolved map rather than just "uniform"
    assert saved == dataclasses.asdict(StudentSpec(preset="compressed", layer_map=[1]))
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher["teacher"])
    assert metrics["student"]["params"] < sum(p.numel() for p in teacher.parameters())
    plain = AutoModelForCausalLM.from_pretrained(out / "student")  # no wavedistill code involved
    selected, _ = load_student(str(out))  # the selected adapter on student_init/
    probe = load_file(out / "final_logits.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(plain(probe["input_ids"]).logits, selected(probe["input_ids"]).logits)
        if metrics["selected_step"] == metrics["steps"]:
            torch.testing.assert_close(plain(probe["input_ids"]).logits, probe["logits"])
    init = AutoModelForCausalLM.from_pretrained(out / "student_init")
    assert not torch.equal(init.model.layers[0].mlp.up_proj.weight, plain.model.layers[0].mlp.up_proj.weight)


def test_training_beats_the_untrained_student_on_val(student_run):
    out, _ = student_run
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    untrained = next(r for r in rows if r["stage"] == "0:kd" and "stage_step" not in r)
    assert min(r["val_kl"] for r in rows if "val_kl" in r and "stage_step" in r) < untrained["val_kl"]


def test_eval_scores_a_student_run_against_its_teacher(student_run, tiny_teacher, capsys):
    from wavedistill.cli.main import main

    out, metrics = student_run
    assert main(["eval", "--student", str(out), "--data", str(tiny_teacher["corpus"])]) == 0
    again = json.loads((out / "eval_metrics.json").read_text())
    assert again["kl"] == pytest.approx(metrics["kl"], rel=1e-5) and again["positions"] == metrics["positions"]


def test_a_wave_student_saves_its_mixers_beside_the_hugging_face_weights(tiny_teacher, tmp_path, monkeypatch):
    from wavedistill.training.distill import run
    from wavedistill.io import load_student

    monkeypatch.chdir(tmp_path)  # a relative --output-dir: the saved student must load from anywhere
    metrics = run(tiny_run_config(tiny_teacher, "run", student={**STUDENT, "mixer": "learned_gate"}, max_steps=2))
    assert metrics["mixer"] == "learned_gate" and metrics["layers"] == [0]
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path.parent)
    folder, _ = load_student(str(out / "student"))
    selected, _ = load_student(str(out))
    ids = load_file(out / "final_logits.safetensors")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(folder(ids).logits, selected(ids).logits)


class Killed(Exception):
    pass


def test_a_student_run_resumed_after_a_crash_ends_where_an_uninterrupted_one_ends(student_run, tiny_teacher,
                                                                                   tmp_path, monkeypatch):
    import wavedistill.training.distill as d
    import wavedistill.training.loop as loop

    out = tmp_path / "run"
    fast = loop.train_batch

    def dies(stream, batch_size, seq_len, seed, index):
        if index == 3:
            raise Killed
        return fast(stream, batch_size, seq_len, seed, index)

    monkeypatch.setattr(loop, "train_batch", dies)
    with pytest.raises(Killed):
        d.run(tiny_run_config(tiny_teacher, out, student=STUDENT, max_steps=6, save_every=2, eval_every=2))
    monkeypatch.setattr(loop, "train_batch", fast)
    metrics = d.run(tiny_run_config(tiny_teacher, out, student=STUDENT, max_steps=6, save_every=2, eval_every=2,
                                    resume=True))
    ref_out, ref = student_run
    mine, theirs = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(
        ref_out / "adapter" / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-6, msg=k)
    assert metrics["kl"] == pytest.approx(ref["kl"], abs=1e-6)


@pytest.mark.parametrize("changes,message", [
    (dict(student={"preset": "huge"}), "unknown student preset 'huge'; known: standard, compressed, tiny"),
    (dict(student={"depth": 2}), r"unknown student keys \['depth'\]"),
    (dict(student=STUDENT, keep_attention=[0]), "keep_attention convert the teacher in place"),
    (dict(student=STUDENT, wave_type="rotary_gla"), "wave_type convert the teacher in place.*--student-mixer"),
    (dict(student=STUDENT, stages=[{"kind": "transfer", "steps": 2}]), r"stages \['transfer'\] train mixers"),
    (dict(student={"mixer": "no_such_mixer"}), "unknown mixer 'no_such_mixer'"),
    (dict(student={"path": "/x", "layers": 1}), "has its own shape; drop layers"),
])
def test_settings_without_meaning_for_a_separate_student_are_refused_before_anything_runs(tiny_teacher, tmp_path,
                                                                                          changes, message):
    with pytest.raises(WavedistillError, match=message):
        tiny_run_config(tiny_teacher, tmp_path / "run", **changes)
    assert not (tmp_path / "run").exists()


def test_a_layer_map_out_of_range_fails_before_anything_is_written(tiny_teacher, tmp_path):
    from wavedistill.training.distill import run

    with pytest.raises(WavedistillError, match=r"layer map entries \[5\] out of range"):
        run(tiny_run_config(tiny_teacher, tmp_path / "run", student={"layers": 1, "layer_map": [5]}))
    assert not (tmp_path / "run").exists()


def test_the_kd_command_needs_a_student(tiny_teacher, tmp_path, capsys):
    from wavedistill.cli.main import main

    code = main(["kd", "--teacher", str(tiny_teacher["teacher"]), "--data", str(tiny_teacher["corpus"]),
                 "--output-dir", str(tmp_path / "run")])
    assert code != 0 and "wavedistill kd distils into a separate student" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_feature_matching_trains_the_projections_to_the_teacher_width(tiny_teacher, tmp_path, monkeypatch):
    import wavedistill.training.distill as d
    from wavedistill.kd.features import FeatureProjection

    seen = {}
    init = FeatureProjection.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen["proj"] = self
        seen["start"] = [m.weight.detach().clone() for m in self.maps]

    monkeypatch.setattr(FeatureProjection, "__init__", keep)
    out = tmp_path / "run"
    stages = [{"kind": "kd", "steps": 3, "hidden_weight": 1.0, "hidden_loss": "cosine", "label_smoothing": 0.1}]
    d.run(tiny_run_config(tiny_teacher, out, student=STUDENT, stages=stages))
    proj = seen["proj"]
    assert [tuple(m.weight.shape) for m in proj.maps] == [(32, 16)], "one map, student width 16 -> teacher 32"
    assert not torch.equal(proj.maps[0].weight, seen["start"][0]), "the projection trains"
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["feature_cosine"] > 0 for r in rows if "stage_step" in r)


def test_report_shows_parameters_size_and_speed_of_a_student_run(student_run, capsys):
    from wavedistill.cli.main import main

    out, metrics = student_run
    assert main(["report", str(out)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split(" | ")
    assert row[4] == f"{metrics['params']:,}" and metrics["params"] == metrics["student"]["params"]
    size = sum(f.stat().st_size for f in (out / "student").iterdir() if f.is_file()) / 1e6
    assert row[5] == f"{size:.2f}"
    assert float(row[10].replace(",", "")) > 0, "training tokens/s"
    assert metrics["generate_tokens_per_s_student"] > 0 and metrics["generate_tokens_per_s_teacher"] > 0


def _student_folder(tiny_teacher, folder, extra_rows=0, corpus=None):
    """A smaller Qwen3 with the teacher's tokenizer (or one fitted to ``corpus``), its vocabulary padded by
    ``extra_rows`` rows, saved like any HF model."""
    from transformers import Qwen3ForCausalLM

    from tests.tiny_teachers import tiny_qwen3_config
    from wavedistill.cli.demo import build_tokenizer

    tokenizer = build_tokenizer(str(corpus or tiny_teacher["corpus"]))
    config = tiny_qwen3_config(len(tokenizer) + extra_rows)
    config.num_hidden_layers, config.layer_types = 1, config.layer_types[:1]
    torch.manual_seed(3)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_student_folder_with_a_padded_vocabulary_trains_on_the_shared_rows(tiny_teacher, tmp_path):
    from wavedistill.training.distill import run

    folder = _student_folder(tiny_teacher, tmp_path / "student_model", extra_rows=7)
    metrics = run(tiny_run_config(tiny_teacher, tmp_path / "run", student={"path": str(folder)}, max_steps=2))
    assert metrics["student"]["layers"] == 1 and metrics["student"]["layer_map"] == [1]
    assert 0 < metrics["kl"] < 50 and metrics["positions"] > 0


def test_a_student_folder_with_another_tokenizer_is_refused_before_anything_is_written(tiny_teacher, tmp_path):
    from tests.tiny_teachers import write_tiny_corpus
    from wavedistill.training.distill import run

    other = write_tiny_corpus(tmp_path / "other.txt", n_stories=5, seed=7)
    folder = _student_folder(tiny_teacher, tmp_path / "student_model", corpus=other)
    with pytest.raises(WavedistillError, match="the student's tokenizer .* differs from the teacher's"):
        run(tiny_run_config(tiny_teacher, tmp_path / "run", student={"path": str(folder)}, max_steps=2))
    assert not (tmp_path / "run").exists()


def test_report_tags_a_run_trained_on_ce_alone(tiny_teacher, tmp_path):
    import yaml

    from wavedistill.evals.runs import _ce_only

    for name, changes, expected in [("ce", {"loss": {"kl_weight": 0.0}}, True), ("kd", {}, False),
                                    ("ce_stage", {"stages": [{"kind": "kd", "steps": 5, "kl_weight": 0.0}]}, True),
                                    ("recorded_as_alpha", {"alpha": 0.0}, True)]:  # folders of wavedistill 0.1
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(changes))
        assert _ce_only(str(tmp_path / name)) is expected, name
