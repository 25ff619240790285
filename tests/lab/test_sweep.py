"""Multi-seed lab runs and mixer sweeps: summaries with spreads, reuse, refusal, plots, and the CLI."""

import json
import os
import subprocess
import sys

import pytest

from tests.cli.test_main import ENV, assert_one_line_error, ok, wavedistill_here
from wavedistill.errors import WavedistillError
from wavedistill.lab.config import make_lab_config
from wavedistill.lab.sweep import run_compare, run_lab

SMALL = dict(task="modular", task_kwargs={"p": 11, "train_frac": 0.5}, d_model=32, d_mlp=64, steps=30, eval_every=10)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "run"
    summary = run_lab(make_lab_config({**SMALL, "mixer": "learned_gate", "seeds": [0, 1], "jobs": 2,
                                       "output_dir": str(out)}))
    return out, summary


def test_a_multi_seed_run_reports_median_and_range_over_seeds(two_seeds):
    out, summary = two_seeds
    per_seed = [summary["seeds"][s]["final_test_acc"] for s in ("0", "1")]
    assert summary["final_test_acc"] == {"median": sum(per_seed) / 2, "min": min(per_seed), "max": max(per_seed)}
    assert summary["n_seeds"] == 2 and summary["config"]["mixer"] == "learned_gate"
    assert summary["wavedistill_version"] and summary["params"] > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    for s in (0, 1):
        folder = out / f"seed_{s}"
        for name in ("config.yaml", "train_log.jsonl", "model.safetensors", "summary.json"):
            assert (folder / name).exists(), name
        assert "seed: %d" % s in (folder / "config.yaml").read_text()
        assert "wavedistill_version" in (folder / "config.yaml").read_text()
    for name in ("curves_seed0.png", "embedding_spectrum_seed1.png", "mixer_spectrum_seed0.png"):
        assert (out / "plots" / name).stat().st_size > 1000


def test_analyze_regenerates_the_plots_from_the_saved_run(two_seeds):
    from wavedistill.lab.analysis import analyze

    out, _ = two_seeds
    for p in (out / "plots").iterdir():
        p.unlink()
    result = analyze(str(out))
    assert (out / "plots" / "curves_seed1.png").exists() and (out / "plots" / "embedding_spectrum_seed0.png").exists()
    emb = result["0"]["embedding"]
    assert len(emb["key_frequencies"]) == 5 and 0 < emb["top5_share"] <= 1.0


def test_finished_seeds_are_reused_and_other_settings_refused(two_seeds):
    out, summary = two_seeds
    before = (out / "seed_0" / "model.safetensors").stat().st_mtime_ns
    again = run_lab(make_lab_config({**SMALL, "mixer": "learned_gate", "seeds": [0, 1], "output_dir": str(out)}))
    assert (out / "seed_0" / "model.safetensors").stat().st_mtime_ns == before
    assert again["seeds"] == summary["seeds"]
    with pytest.raises(WavedistillError, match="other settings .*lr"):
        run_lab(make_lab_config({**SMALL, "mixer": "learned_gate", "lr": 0.01, "output_dir": str(out)}))


def test_lab_compare_writes_one_table_and_a_plot(tmp_path):
    table = run_compare({**SMALL, "seeds": [0]}, ["attention", "fnet"], str(tmp_path / "cmp"))
    assert "| `attention` |" in table and "| `fnet` |" in table and "grok step" in table
    assert (tmp_path / "cmp" / "compare.md").read_text() == table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "fnet" / "summary.json").exists()


def test_lab_compare_picks_each_mixers_lr_on_a_held_out_seed(tmp_path):
    import yaml

    out = tmp_path / "cmp"
    table = run_compare({**SMALL, "seeds": [0]}, ["attention", "fnet"], str(out), lrs=[1e-4, 3e-2], lr_seed=7)
    search = (out / "lr_search.md").read_text()
    assert search.count("✓") == 2 and "seed 7" in search
    for m in ("attention", "fnet"):
        trials = {lr: json.loads((out / "lr_search" / m / f"lr{lr:g}" / "seed_7" / "summary.json").read_text())
                  for lr in (1e-4, 3e-2)}
        best = max(trials, key=lambda lr: (trials[lr]["final_test_acc"], -trials[lr]["final_test_loss"]))
        used = yaml.safe_load((out / m / "seed_0" / "config.yaml").read_text())["lr"]
        assert used == best, f"{m}: trained the reported seed at lr {used}, the held-out seed preferred {best}"
        assert f"| `{m}` |" in table and f"| {best:g} |" in table
    with pytest.raises(WavedistillError, match="also a reported seed"):
        run_compare({**SMALL, "seeds": [0]}, ["fnet"], str(tmp_path / "bad"), lrs=[1e-3], lr_seed=0)


def lab(*args):
    return subprocess.run([sys.executable, "-m", "wavedistill", "lab", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_lab_cli_runs_a_task_with_phase_embeddings(tmp_path):
    out = tmp_path / "cli"
    ok(lab("modular", "--mixer", "phase_shift", "--p", 11, "--train-frac", 0.5, "--steps", 20, "--eval-every", 10,
           "--d-model", 32, "--d-mlp", 64, "--phase-embedding", "--output-dir", out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["phase_embedding"] is True and summary["config"]["task_kwargs"] == {"p": 11,
                                                                                                   "train_frac": 0.5}
    assert os.path.exists(out / "plots" / "curves_seed0.png")


@pytest.mark.parametrize("args,needles", [
    (["modular", "--mixer", "nope"], ["'nope'", "attention"]),
    (["modular", "--n-pairs", 4], ["unknown options", "n_pairs"]),
    (["charlm", "--steps", 2], ["--data"]),
    (["mqar", "--phase-embedding"], ["phase_embedding"]),
    (["compare", "--mixers", "fnet"], ["--task"]),
    (["event_hold", "--output-weight", 0.5], ["--teacher"]),
    (["event_hold", "--gamma", 0.5], ["gamma was renamed hidden_weight", "--hidden-weight"]),
    (["event_hold", "--preset", "huge"], ["unknown preset", "standard, compressed, tiny"]),
    (["event_hold", "--teacher", "nowhere", "--steps", 1], ["not a finished lab seed folder"]),
], ids=["unknown-mixer", "option-of-another-task", "charlm-without-data", "phase-embedding-off-modular",
        "compare-without-task", "output-weight-without-teacher", "old-flag-name", "unknown-preset",
        "teacher-not-a-seed-folder"])
def test_bad_lab_input_is_one_line_error(tmp_path, args, needles):
    # In this process: each stops before any training, and a fresh interpreter costs ~2.5 s of CI time.
    assert_one_line_error(wavedistill_here("lab", *args, "--output-dir", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_a_student_is_sized_by_preset_and_flags_on_the_command_line(tmp_path):
    import argparse

    from wavedistill.cli.lab import add_lab_parsers, lab_changes
    from wavedistill.lab.config import make_lab_config, resolve

    parser = argparse.ArgumentParser()
    add_lab_parsers(parser.add_subparsers())
    args = parser.parse_args(["lab", "event_hold", "--mixer", "s4d", "--preset", "compressed", "--d-model", "16",
                              "--state-dim", "64", "--n-layers", "2"])
    r = resolve(make_lab_config(lab_changes(args, "event_hold")))
    assert (r.d_model, r.n_layers, r.mixer_kwargs, r.d_mlp) == (16, 2, {"state_dim": 64}, 128)
