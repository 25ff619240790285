"""Recipes: stage specs are strict, the --stages flag parses, and every file in configs/ loads and validates."""

from pathlib import Path

import pytest

from wavedistill.training.config import load_yaml, make_config, recipe_stages, upgraded
from wavedistill.errors import WavedistillError
from wavedistill.training.recipes import (STAGES, HandoffStage, KDStage, ProgressiveStage, TransferStage, make_stage,
                                 parse_stages_flag)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_recipes_to_check():
    assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_loads_validates_and_starts_with_the_command_that_runs_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# wavedistill "), first
    assert f"configs/{path.name}" in first, "the command on the first line must name this very file"
    cfg = make_config(load_yaml(str(path)))
    stages = recipe_stages(cfg)
    assert stages and all(s.kind in STAGES for s in stages)


def test_a_config_without_stages_is_one_kd_stage_of_max_steps():
    stages = recipe_stages(make_config({"max_steps": 30}))
    assert stages == [KDStage(steps=30)]
    assert recipe_stages(make_config({"train": False})) == []


def test_stages_flag_parses_kinds_and_step_counts():
    assert parse_stages_flag("fit, transfer:500,kd:1500") == [
        {"kind": "fit"}, {"kind": "transfer", "steps": 500}, {"kind": "kd", "steps": 1500}]
    assert parse_stages_flag("progressive:300") == [{"kind": "progressive", "steps_per_swap": 300}]
    with pytest.raises(WavedistillError, match="KIND:STEPS"):
        parse_stages_flag("kd:many")


@pytest.mark.parametrize("spec,needle", [
    ({"kind": "distill", "steps": 5}, "unknown stage kind 'distill'; known kinds: fit, transfer, kd"),
    ({"kind": "kd", "steps": 5, "alpha": 0.5}, "unknown keys ['alpha'] for a 'kd' stage"),
    ({"kind": "kd"}, "needs steps > 0"),
    ({"kind": "transfer", "steps": 5, "loss": "l1"}, "transfer loss must be one of"),
    ({"kind": "progressive", "order": "random"}, "order must be one of"),
    ({"kind": "handoff", "steps": 5, "ramp_frac": 0.0}, "ramp_frac"),
    ({"kind": "handoff", "steps": 5, "mode": "all"}, "hand-off mode"),
    ({"kind": "kd", "steps": 5, "temperature_schedule": "step"}, "temperature_schedule"),
    ({"steps": 5}, "'kind' key"),
], ids=["kind", "key", "steps", "loss", "order", "ramp", "mode", "temperature", "no-kind"])
def test_bad_stage_specs_are_refused_with_what_to_do(spec, needle):
    with pytest.raises(WavedistillError) as e:
        make_stage(spec)
    assert needle in str(e.value)


def test_bad_stages_in_a_config_fail_when_the_config_is_made():
    with pytest.raises(WavedistillError, match="unknown stage kind"):
        make_config({"stages": [{"kind": "nope"}]})


def test_stage_fields_keep_their_types():
    stage = make_stage({"kind": "handoff", "steps": 10, "learned_gate": True, "mode": "sequential"})
    assert isinstance(stage, HandoffStage) and stage.learned_gate and stage.ramp_frac == 0.8
    assert isinstance(make_stage({"kind": "progressive", "kl-budget": 0.5}), ProgressiveStage)


@pytest.mark.parametrize("changes,needle", [
    ({"lora_mlp": 4, "unfreeze_mlps": True}, "one recovery"),
    ({"lora_merge": True}, "lora_merge needs lora_mlp"),
])
def test_recovery_options_that_contradict_each_other_are_refused(changes, needle):
    with pytest.raises(WavedistillError, match=needle):
        make_config(changes)


def test_max_steps_beside_stages_is_refused_rather_than_ignored():
    with pytest.raises(WavedistillError, match="max_steps 800 has no effect on a run with stages"):
        make_config({"max_steps": 800, "stages": [{"kind": "kd", "steps": 200}]})
    assert recipe_stages(make_config({"stages": [{"kind": "kd", "steps": 200}]})) == [KDStage(steps=200)]


def test_loss_settings_go_to_every_stage_trained_on_the_kd_loss():
    loss = {"label_smoothing": 0.1, "divergence": "jsd", "hidden_weight": 0.5}
    (default,) = recipe_stages(make_config({"max_steps": 7, "loss": loss}))
    assert default == KDStage(steps=7, **loss)
    stages = recipe_stages(make_config({"loss": loss, "stages": [
        {"kind": "transfer", "steps": 2}, {"kind": "kd", "steps": 3, "label_smoothing": 0.1},
        {"kind": "progressive", "steps_per_swap": 2}]}))
    assert stages[0] == TransferStage(steps=2)
    assert [(s.label_smoothing, s.divergence, s.hidden_weight) for s in stages[1:]] == [(0.1, "jsd", 0.5)] * 2


@pytest.mark.parametrize("changes,needle", [
    ({"loss": {"attention_weight": 1.0}, "stages": [{"kind": "kd", "steps": 2, "attention_weight": 0.5}]},
     r"stage 0 \(kd\) sets attention_weight=0.5, the loss flags attention_weight=1.0: keep one"),
    ({"loss": {"alpha": 0.5}}, r"unknown loss settings \['alpha'\]; known: kl_weight, ce_weight"),
    ({"alpha": 0.5}, r"^alpha was replaced by the kd loss's kl_weight and ce_weight"),  # an earlier version's key
    ({"loss": {"hidden_weight": 1.0}, "stages": [{"kind": "transfer", "steps": 2}]},
     "apply to kd / progressive / handoff stages; the recipe has none"),
])
def test_loss_settings_that_would_be_ignored_or_overridden_are_refused(changes, needle):
    with pytest.raises(WavedistillError, match=needle):
        make_config(changes)


def test_a_run_folder_that_recorded_alpha_reads_as_the_kd_stages_weights():
    old = {"alpha": 1.0, "stages": [{"kind": "transfer", "steps": 5}, {"kind": "kd", "steps": 5},
                                    {"kind": "kd", "steps": 5, "ce_weight": 0.3}]}
    stages = recipe_stages(make_config(upgraded(old)))
    assert [(s.kl_weight, s.ce_weight) for s in stages[1:]] == [(1.0, 0.0), (1.0, 0.3)]  # a stage's own value wins
    (default,) = recipe_stages(make_config({**upgraded({"alpha": 0.5}), "max_steps": 3}))
    assert (default.kl_weight, default.ce_weight) == (0.5, 0.5)


def test_a_finished_run_that_recorded_alpha_is_read_in_todays_keys(tmp_path):
    from wavedistill.evals.runs import read_run_config

    (tmp_path / "config.yaml").write_text("alpha: 1.0\nstages: [{kind: kd, steps: 5}]\n")
    saved = read_run_config(str(tmp_path))
    assert "alpha" not in saved and saved["stages"] == [{"kind": "kd", "steps": 5, "kl_weight": 1.0, "ce_weight": 0.0}]
    make_config(saved)  # `layers --from-run` and `eval` build the run's config from it


def test_student_stages_and_loss_are_dataclasses_once_the_config_is_made():
    from wavedistill.training.config import recorded_settings
    from wavedistill.training.recipes import KDLoss
    from wavedistill.training.student_spec import StudentSpec

    cfg = make_config({"student": {"preset": "tiny", "mixer": "rotary_gla"}, "loss": {"ce_weight": 0.2},
                       "stages": [{"kind": "kd", "steps": 4}]})
    assert cfg.student == StudentSpec(preset="tiny", mixer="rotary_gla")
    assert cfg.stages == [KDStage(steps=4, ce_weight=0.2)] and cfg.loss is None  # the flags went into the stages
    assert make_config({"loss": {"ce_weight": 0.2}, "max_steps": 3}).loss == KDLoss(ce_weight=0.2)
    # what config.yaml records (every field written out) makes the same config again
    assert make_config(recorded_settings(cfg)) == cfg
    with pytest.raises(WavedistillError, match=r"unknown student keys \['width'\]"):
        make_config({"student": {"width": 3}})
    with pytest.raises(WavedistillError, match="student must be a mapping"):
        make_config({"student": "tiny"})


def test_a_record_with_partial_mappings_compares_equal_to_the_same_settings_in_full(tmp_path):
    import yaml

    from wavedistill.training.config import check_resume

    # config.yaml as wavedistill 0.2.0 wrote it: the stage and student mappings as given, the loss flags apart
    partial = {"output_dir": str(tmp_path), "max_steps": 0, "student": {"preset": "tiny"},
               "loss": {"ce_weight": 0.2}, "stages": [{"kind": "kd", "steps": 4}]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(partial))
    check_resume(make_config({**partial, "resume": True}))  # the same settings: accepted
    with pytest.raises(WavedistillError, match="--resume with other settings.*stages"):
        check_resume(make_config({**partial, "resume": True, "stages": [{"kind": "kd", "steps": 4, "ce_weight": 0.5}],
                                  "loss": None}))
