"""Lab distillation: presets, loss terms equal to their naive formulas, teacher checks, and an end-to-end run."""

import json

import pytest
import torch

from wavedistill.errors import WavedistillError
from wavedistill.kd.features import FeatureProjection, feature_loss
from wavedistill.lab.config import PRESETS, make_lab_config, resolve
from wavedistill.lab.distill import block_feature_loss, data_seed, output_gap, output_loss
from wavedistill.lab.model import build_model
from wavedistill.lab.tasks import build_task
from wavedistill.lab.train import train_seed

TASK = {"seq_len": 24, "n_train": 256, "n_test": 64}
GROUND_TRUTH_ONLY = {"task_weight": 1.0, "output_weight": 0.0, "hidden_weight": 0.0}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A selective S4D teacher trained briefly on event_hold (3 layers, width 16)."""
    out = tmp_path_factory.mktemp("teacher") / "seed_0"
    cfg = make_lab_config(dict(task="event_hold", task_kwargs=TASK, mixer="selective_s4d", d_model=16, n_layers=3,
                               n_heads=2, d_mlp=32, steps=30, eval_every=30, batch_size=16,
                               mixer_kwargs={"state_dim": 8}))
    train_seed(cfg, 0, str(out))
    return str(out)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_the_stated_sizes(name):
    cfg = make_lab_config(dict(task="event_hold", mixer="s4d", preset=name))
    model = build_model(cfg, build_task("event_hold", 0, n_train=1, n_test=1))
    want = PRESETS[name]
    assert model.d_model == want["d_model"] and len(model.blocks) == want["n_layers"]
    mixer = model.blocks[0].mixer
    assert mixer.state_dim == want["state_dim"] and mixer.n_heads == want["n_heads"]
    assert model.blocks[0].mlp[0].out_features == want["d_mlp"]


def test_explicit_sizes_win_over_the_preset_and_unknown_presets_are_refused():
    r = resolve(make_lab_config(dict(task="event_hold", mixer="s4d", preset="tiny", d_model=48,
                                     mixer_kwargs={"state_dim": 16})))
    assert r.d_model == 48 and r.n_layers == 3 and r.mixer_kwargs == {"state_dim": 16}
    with pytest.raises(WavedistillError, match="unknown preset 'huge'; known presets: standard, compressed, tiny"):
        make_lab_config(dict(task="event_hold", preset="huge"))


def test_loss_weights_default_by_whether_a_teacher_is_given(teacher):
    weights = ("task_weight", "output_weight", "hidden_weight")
    assert [getattr(resolve(make_lab_config(dict(task="event_hold"))), k) for k in weights] == [1, 0, 0]
    r = resolve(make_lab_config(dict(task="event_hold", task_kwargs=TASK, teacher=teacher)))
    assert [getattr(r, k) for k in weights] == [0.3, 0.5, 0.2]
    with pytest.raises(WavedistillError, match="pass --teacher"):
        make_lab_config(dict(task="event_hold", output_weight=0.5))
    with pytest.raises(WavedistillError, match="^beta was renamed output_weight"):  # an earlier version's key
        make_lab_config(dict(task="event_hold", beta=0.5))


def test_output_and_feature_losses_equal_their_naive_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(4, 7, 2), torch.randn(4, 7, 2)
    assert torch.allclose(output_loss("regress", s, t, 4.0), ((s - t) ** 2).sum() / s.numel())
    assert torch.allclose(output_gap("regress", s, t), ((s - t) ** 2).mean(-1).flatten())
    ls, lt = torch.randn(5, 11), torch.randn(5, 11)
    T = 4.0
    p, q = torch.softmax(lt / T, -1), torch.softmax(ls / T, -1)
    naive = (p * (p.log() - q.log())).sum(-1).mean() * T**2
    assert torch.allclose(output_loss("lm", ls, lt, T), naive, atol=1e-6)
    assert output_loss("lm", lt, lt, T).abs() < 1e-6 and output_loss("regress", t, t, T) == 0
    hs, ht = [torch.randn(2, 5, 3) for _ in range(2)], [torch.randn(2, 5, 6) for _ in range(2)]
    proj = FeatureProjection(3, 6, 2)
    with torch.no_grad():
        for lin in proj.maps:
            lin.weight.normal_()
    naive = sum(((h @ lin.weight.T - g) ** 2).mean() for h, g, lin in zip(hs, ht, proj.maps)) / 2
    assert torch.allclose(feature_loss(hs, ht, "mse", proj), naive)
    assert torch.allclose(block_feature_loss(hs, ht, proj, "mse"), naive)
    relative = sum(((h @ lin.weight.T - g) ** 2).mean() / (g**2).mean() for h, g, lin in zip(hs, ht, proj.maps)) / 2
    assert torch.allclose(block_feature_loss(hs, ht, proj, "relative_mse"), relative)
    # scale-free: the teacher and the student both 10 x larger give the same relative loss
    scaled = block_feature_loss([10 * h for h in hs], [10 * g for g in ht], proj, "relative_mse")
    assert torch.allclose(scaled, relative)


def test_bad_teacher_input_is_a_one_line_error(tmp_path, teacher):
    with pytest.raises(WavedistillError, match="is not a finished lab seed folder"):
        train_seed(make_lab_config(dict(task="event_hold", task_kwargs=TASK, teacher=str(tmp_path))), 0,
                   str(tmp_path / "s"))
    with pytest.raises(WavedistillError, match="distil on the teacher's task and options"):
        train_seed(make_lab_config(dict(task="event_hold", task_kwargs={**TASK, "seq_len": 16}, teacher=teacher,
                                        steps=1)), 0, str(tmp_path / "s2"))
    with pytest.raises(WavedistillError, match="differs from the teacher's data seed 0"):
        data_seed(make_lab_config(dict(task="event_hold", task_kwargs=TASK, teacher=teacher, data_seed=5)), 1)
    with pytest.raises(WavedistillError, match="the student has 4 layers, the teacher only 3"):
        train_seed(make_lab_config(dict(task="event_hold", task_kwargs=TASK, teacher=teacher, n_layers=4, steps=1,
                                        d_model=8, n_heads=2, d_mlp=16)), 0, str(tmp_path / "s3"))
    assert not (tmp_path / "s3" / "summary.json").exists()


def test_a_narrower_s4d_student_distils_on_the_teachers_data_and_reports_its_gap(tmp_path, teacher):
    student = dict(task="event_hold", task_kwargs=TASK, mixer="s4d", d_model=8, n_layers=2, n_heads=2, d_mlp=16,
                   steps=25, eval_every=25, batch_size=16, teacher=teacher, mixer_kwargs={"state_dim": 8})
    kd = train_seed(make_lab_config(student), 1, str(tmp_path / "kd"))
    control = train_seed(make_lab_config({**student, **GROUND_TRUTH_ONLY}), 1,
                         str(tmp_path / "control"))
    import yaml

    saved = yaml.safe_load((tmp_path / "kd" / "config.yaml").read_text())
    assert saved["task_data_seed"] == 0 and saved["seed"] == 1 and saved["layer_map_used"] == [1, 2]
    for s in (kd, control):
        assert s["final_test_mse_vs_teacher"] > 0 and s["test_targets"] == 64 * 24
        assert s["train_tokens_per_s"] > 0 and s["infer_tokens_per_s"] > 0
    assert kd["loss_weights"] == {"task": 0.3, "output": 0.5, "hidden": 0.2}
    assert control["loss_weights"] == {"task": 1.0, "output": 0.0, "hidden": 0.0}
    # Same data, same init and batches: only the loss differs, so the runs differ.
    assert kd["final_test_loss"] != control["final_test_loss"]
    logged = [json.loads(x) for x in (tmp_path / "kd" / "train_log.jsonl").read_text().splitlines()]
    assert "test_mse_vs_teacher" in logged[-1]


def test_distilled_student_matches_the_teacher_better_than_its_control(tmp_path, teacher):
    # output_weight = 1 only: the student regresses onto the teacher's outputs; it must end closer to them than
    # the same student trained on ground truth for the same steps.
    student = dict(task="event_hold", task_kwargs=TASK, mixer="selective_s4d", d_model=16, n_layers=3, n_heads=2,
                   d_mlp=32, steps=30, eval_every=30, batch_size=16, teacher=teacher, mixer_kwargs={"state_dim": 8})
    teacher_only = {"task_weight": 0.0, "output_weight": 1.0, "hidden_weight": 0.0}
    kd = train_seed(make_lab_config({**student, **teacher_only}), 1, str(tmp_path / "a"))
    gt = train_seed(make_lab_config({**student, **GROUND_TRUTH_ONLY}), 1, str(tmp_path / "b"))
    assert kd["final_test_mse_vs_teacher"] < gt["final_test_mse_vs_teacher"]
