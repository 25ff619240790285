"""The stories task (subword LM from scratch): document split, every held-out token scored, perplexity,
parameter matching, bad input, and the whole `lab compare` -> `lab lm-report` path at a tiny size."""

import math
import os
import subprocess
import sys

import pytest
import torch

from tests.cli.test_main import ENV, assert_one_line_error
from tests.tiny_teachers import write_tiny_corpus, write_tiny_teacher
from wavedistill.data import run_splits
from wavedistill.errors import DataError, WavedistillError
from wavedistill.lab.config import make_lab_config, resolve
from wavedistill.lab.model import MATCH_TOLERANCE, build_model, matched_d_mlp, param_counts
from wavedistill.lab.tasks import build_task
from wavedistill.lab.train import evaluate

MIXERS = ["attention", "wda", "rotary_gla", "gated_delta_net", "s4d", "learned_gate"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stories")
    text = write_tiny_corpus(root / "stories.txt")
    return {"data": str(text), "tokenizer": str(write_tiny_teacher(root / "tok", text))}


def test_held_out_documents_are_the_distill_split_and_every_token_is_scored(corpus):
    task = build_task("stories", seed=0, seq_len=16, **corpus)
    splits = run_splits(corpus["data"], task.tokenizer)  # what `wavedistill distill` trains and reports on
    assert torch.equal(task.splits.test, splits.test) and torch.equal(task.splits.val, splits.val)
    n = (len(splits.test) - 1) // 16
    assert task.test_y.numel() == n * 16 and torch.equal(task.test_y.flatten(), splits.test[1: n * 16 + 1])
    x, y, pad = task.train_batch(step=3, batch_size=4)
    assert pad is None and torch.equal(x[:, 1:], y[:, :-1])
    starts = [next(i for i in range(len(splits.train)) if torch.equal(splits.train[i: i + 16], row)) for row in x]
    assert all(s + 16 < len(splits.train) for s in starts)  # drawn from the train tokens alone
    assert set(task.eval_sets()) == {"train", "test", "val"}


def test_seeds_read_together_share_one_tokenized_corpus(corpus, tmp_path):
    from wavedistill.lab.analysis import load_seed
    from wavedistill.lab.sweep import run_lab

    cfg = make_lab_config({"task": "stories", "task_kwargs": {"seq_len": 16, **corpus}, "d_model": 16, "d_mlp": 32,
                           "n_layers": 1, "steps": 1, "seeds": [0, 1], "output_dir": str(tmp_path)})
    run_lab(cfg)
    tasks = {}
    (_, a, _), (_, b, _) = (load_seed(str(tmp_path / f"seed_{s}"), tasks) for s in (0, 1))
    assert a is b and len(tasks) == 1  # the seed draws no stories data: one task for both
    (_, c, _) = load_seed(str(tmp_path / "seed_1"))
    assert c is not a and torch.equal(c.test_y, a.test_y)


def test_evaluate_reports_perplexity_as_exp_of_the_mean_loss(corpus):
    task = build_task("stories", seed=0, seq_len=16, **corpus)
    cfg = make_lab_config({"task": "stories", "task_kwargs": {"seq_len": 16, **corpus}, "d_model": 16, "d_mlp": 32,
                           "n_layers": 1})
    out = evaluate(build_model(cfg, task), task, {"test": task.eval_sets()["test"]}, "cpu")
    assert out["test_ppl"] == pytest.approx(math.exp(out["test_loss"]))
    assert out["test_targets"] == task.test_y.numel()


def test_every_mixer_is_matched_to_attentions_parameters_within_five_percent(corpus):
    task = build_task("stories", seed=0, seq_len=16, **corpus)
    target = None
    for mixer in MIXERS:
        cfg = make_lab_config({"task": "stories", "mixer": mixer, "match_params": "attention", "d_model": 32,
                               "n_heads": 4, "d_mlp": 128, "n_layers": 2, "task_kwargs": {"seq_len": 16, **corpus}})
        counts = param_counts(build_model(cfg, task))
        target = target or counts["non_embedding"]
        assert abs(counts["non_embedding"] - target) <= MATCH_TOLERANCE * target, mixer
        assert counts["embedding"] == 2 * task.vocab_size * 32  # token table + read-out, no position table
    # a reference too small for the mixer alone: no MLP width can match it
    cfg = make_lab_config({"task": "stories", "mixer": "s4d", "match_params": "fnet", "d_model": 32,
                           "d_mlp": 1, "task_kwargs": {"seq_len": 16, **corpus}})
    with pytest.raises(WavedistillError, match="cannot match 's4d' to 'fnet'.*drop --match-params"):
        matched_d_mlp(resolve(cfg), task)


def test_bad_input_is_a_one_line_error(corpus, tmp_path):
    with pytest.raises(WavedistillError, match="unknown tokenizer .*not a folder"):
        build_task("stories", seed=0, data=corpus["data"], tokenizer=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WavedistillError, match="unknown tokenizer .*tokenizer.json or tokenizer.model"):
        build_task("stories", seed=0, data=corpus["data"], tokenizer=str(tmp_path / "empty"))
    short = tmp_path / "short.txt"
    short.write_text("\n\n".join(f"A tiny story number {i}." for i in range(30)))
    with pytest.raises(DataError, match="fewer than one window"):
        build_task("stories", seed=0, data=str(short), tokenizer=corpus["tokenizer"], seq_len=256)
    with pytest.raises(WavedistillError, match="needs a tokenizer"):
        build_task("stories", seed=0, data=corpus["data"])


def test_lab_compare_then_lm_report_at_a_tiny_size(corpus, tmp_path):
    """The CI version of docs/lab.md's language-model table: 2 mixers, 4 steps, lr on val, 2 seeds, the report."""
    out = tmp_path / "stories"
    common = ["--task", "stories", "--data", corpus["data"], "--tokenizer", corpus["tokenizer"], "--seq-len", "16",
              "--d-model", "16", "--d-mlp", "32", "--n-layers", "1", "--steps", "4", "--eval-every", "2",
              "--match-params", "attention", "--lr-sweep", "1e-3,3e-3", "--seeds", "0,1"]
    r = subprocess.run([sys.executable, "-m", "wavedistill", "lab", "compare", *common, "--mixers", "attention,wda",
                        "--output-dir", str(out)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "by the final val loss" in (out / "lr_search.md").read_text()
    assert "test ppl" in (out / "compare.md").read_text()
    r = subprocess.run([sys.executable, "-m", "wavedistill", "lab", "lm-report", str(out / "attention"),
                        str(out / "wda"), "--output-dir", str(out / "report")], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    report = (out / "report" / "report.md").read_text()
    assert "| `attention` |" in report and "| `wda` |" in report and "induction L=128" in report
    assert "## Routing of `wda`" in report and "## Greedy samples" in report
    assert (out / "report" / "loss_vs_tokens.png").stat().st_size > 1000
    assert f"written to {out / 'report'}" in r.stdout and "lm-report: measuring" in r.stdout
    # checked before anything is measured: a report of other runs, or foreign files, are refused and left alone
    r = subprocess.run([sys.executable, "-m", "wavedistill", "lab", "lm-report", str(out / "wda"), "--output-dir",
                        str(out / "report")], capture_output=True, text=True, env=ENV)
    assert_one_line_error(r, "holds the report of other runs")
    assert (out / "report" / "report.md").read_text() == report
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "wavedistill", "lab", "lm-report", str(out / "wda"), "--output-dir",
                        str(tmp_path / "mine")], capture_output=True, text=True, env=ENV)
    assert_one_line_error(r, "holds files lm-report did not write")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    r = subprocess.run([sys.executable, "-m", "wavedistill", "lab", "lm-report", str(tmp_path), "--output-dir",
                        str(tmp_path / "report_of_nothing")], capture_output=True, text=True, env=ENV)
    assert_one_line_error(r, "has no summary.json")
