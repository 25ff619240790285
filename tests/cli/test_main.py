"""The ``wavedistill`` command line, run as a user runs it: ``python -m wavedistill ...`` subprocesses.

One tiny random Qwen3 teacher folder and one finished 6-step distill run are shared by the whole
module (session fixtures), since each subprocess pays a few seconds of imports. Every command runs
with OMP_NUM_THREADS=1: the models are tiny, and extra threads only fight over shared cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_teachers import write_tiny_corpus, write_tiny_gpt2, write_tiny_teacher
from wavedistill.mixers import list_mixers

# HF_HUB_OFFLINE: nothing here may touch the network; a path that is wrongly taken for a hub id then
# fails at once instead of after a minute of connection retries.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
SHORT_RUN = ["--max-steps", "6", "--seq-len", "32", "--batch-size", "4", "--eval-every", "3", "--save-every", "3"]
RUN_FILES = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "checkpoint", "config.yaml",
             "data_split.json", "metrics.json", "samples.md", "train_log.jsonl"]
METRIC_KEYS = ["positions", "top1_agreement", "top5_overlap", "kl", "ppl_teacher", "ppl_student", "ppl_no_mixing",
               "gap_closed"]


def wavedistill(*args, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wavedistill", *map(str, args)], check=False, env=ENV,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def wavedistill_here(*args) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process: for runs that stop early (bad input), without a fresh interpreter."""
    import contextlib
    import io

    from wavedistill.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\n"
                                  f"stderr:\n{proc.stderr[-4000:]}")
    return proc


# tqdm bars (transformers' "Loading weights", datasets' "Generating train split") also go to stderr.
# They are progress output, not error output, so the one-line check looks past them.
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]|examples/s\]")


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1 and lines[0].startswith("wavedistill: error:"), f"stderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def cli_root(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    # lm-eval reads task JSONL through `datasets`, which would otherwise cache it under the home folder.
    ENV["HF_DATASETS_CACHE"] = str(root / "hf_datasets_cache")
    corpus = write_tiny_corpus(root / "stories.txt")
    return {"root": root, "corpus": corpus, "teacher": write_tiny_teacher(root / "teacher", corpus, seed=0)}


@pytest.fixture(scope="session")
def other_base(cli_root) -> Path:
    return write_tiny_teacher(cli_root["root"] / "other_teacher", cli_root["corpus"], seed=1)


@pytest.fixture(scope="session")
def finished_run(cli_root) -> tuple[Path, subprocess.CompletedProcess]:
    out = cli_root["root"] / "run"
    proc = ok(wavedistill("distill", "--teacher", cli_root["teacher"], "--data", cli_root["corpus"],
                          "--output-dir", out, *SHORT_RUN))
    return out, proc


def distill_args(cli_root, out: Path, *extra) -> list:
    # stages set their own steps (a --max-steps beside them is refused)
    short = SHORT_RUN[2:] if "--stages" in extra else SHORT_RUN
    return ["distill", "--teacher", cli_root["teacher"], "--data", cli_root["corpus"], "--output-dir", out,
            *short, *extra]


def test_distill_writes_a_complete_run_folder(finished_run):
    out, _ = finished_run
    for name in RUN_FILES:
        assert (out / name).exists(), f"{name} missing from the run folder"
    events = list(out.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
    split = json.loads((out / "data_split.json").read_text())
    assert metrics["positions"] == split["test_windows"] * 32 > 0  # every test window, every position
    assert 0.0 <= metrics["top5_overlap"] <= 1.0 and metrics["kl"] >= 0.0
    log = read_log(out)
    # Step 0 is the teacher-initialised student, scored on val so that training has to beat it.
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log if "val_kl" in r] == [0, 3, 6]  # --eval-every 3
    assert metrics["selected_step"] in (0, 3, 6)
    assert "max_steps: 6" in (out / "config.yaml").read_text()
    # Atomic writes leave no temporary folders behind.
    leftovers = [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".old")) or p.name.startswith(".adapter-")]
    assert not leftovers


def test_checkpoint_is_the_final_student(finished_run):
    # checkpoint/ holds the last state as a loadable adapter; this (fresh) process must reproduce
    # the logits the distill process saved at the end of training.
    from wavedistill.io import load_student

    out, _ = finished_run
    saved = load_file(out / "final_logits.safetensors")
    model, _ = load_student(str(out / "checkpoint"))
    with torch.no_grad():
        logits = model(saved["input_ids"], use_cache=False).logits
    assert (logits - saved["logits"]).abs().max().item() <= 1e-6


def test_eval_scores_a_run_folder(finished_run, cli_root, tmp_path):
    out, _ = finished_run
    ok(wavedistill("eval", "--student", out, "--data", cli_root["corpus"], "--seq-len", 32, "--max-windows", 3,
                   "--output-dir", tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["positions"] == 3 * 32
    assert (tmp_path / "samples.md").read_text().startswith("# Side-by-side")


def test_eval_sets_mixer_attributes_for_ablations_and_refuses_unknown_ones(finished_run, cli_root, tmp_path):
    # learned_gate has no branch switches; its `short_len` is a plain attribute, so setting it must
    # change the scores, and an attribute it does not have is a one-line error.
    run = finished_run[0]
    metrics = json.loads((run / "metrics.json").read_text())
    out = tmp_path / "ablation"
    ok(wavedistill_here("eval", "--student", run, "--data", cli_root["corpus"], "--output-dir", out,
                        "--mixer-attrs", '{"short_len": 1}'))
    ablated = json.loads((out / "metrics.json").read_text())
    assert ablated["mixer_attrs"] == {"short_len": 1} and ablated["kl"] != metrics["kl"]
    assert ablated["mixer"] == "learned_gate" and ablated["student_run"] == str(run)
    row = ok(wavedistill_here("report", out)).stdout.splitlines()[2]
    assert f'eval of {run} with mixers set to {{"short_len": 1}}' in row and "| learned_gate |" in row
    proc = wavedistill_here("eval", "--student", run, "--data", cli_root["corpus"], "--output-dir", tmp_path / "bad",
                            "--mixer-attrs", '{"use_band": false}')
    assert_one_line_error(proc, "no setting 'use_band'")


def test_generate_continues_the_prompt(finished_run):
    out, _ = finished_run
    proc = ok(wavedistill_here("generate", "--student", out, "--prompt", "once upon", "--max-new-tokens", 8))
    assert proc.stdout.strip().startswith("once upon")
    assert len(proc.stdout.split()) > 2  # something was generated


# The run to be killed is slowed down (0.3 s per step) so that the kill lands mid-run whatever the
# machine's load, and well before the next checkpoint (3 steps of slack after the one it waits
# for); the patched function is the one the training loop calls for every training batch.
SLOW_WAVEDISTILL = """
import runpy, sys, time
import wavedistill.training.loop as loop
assert hasattr(loop, "train_batch"), "the loop no longer calls loop.train_batch; update this test"
fast = loop.train_batch
def slow(*args, **kwargs):
    time.sleep(0.3)
    return fast(*args, **kwargs)
loop.train_batch = slow
sys.argv = ["wavedistill", *sys.argv[1:]]
runpy.run_module("wavedistill", run_name="__main__")
"""
RESUME_RUN = ["--max-steps", "40", "--save-every", "5", "--eval-every", "20", "--seq-len", "32", "--batch-size", "4"]


@pytest.fixture(scope="session")
def resumed(cli_root):
    """A 40-step run killed (SIGKILL) after its first checkpoint and a few more logged steps,
    then rerun with --resume."""
    out = cli_root["root"] / "resume"
    args = ["distill", "--teacher", cli_root["teacher"], "--data", cli_root["corpus"], "--output-dir", out,
            *RESUME_RUN]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WAVEDISTILL, *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        # Wait for checkpoint/ *and* a logged step past it: a real kill lands between checkpoints.
        while time.time() < deadline and proc.poll() is None:
            if (out / "checkpoint").is_dir() and (out / "train_log.jsonl").exists():
                try:
                    steps = [r["step"] for r in read_log(out)]
                except json.JSONDecodeError:  # a row being written right now
                    steps = []
                if steps and steps[-1] >= 7:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself before the kill:\n{err[-3000:]}"
    assert not (out / "metrics.json").exists()
    killed_log = read_log(out)
    second = ok(wavedistill(*args, "--resume"))
    return {"out": out, "killed_log": killed_log, "proc": second, "log": read_log(out)}


def test_resume_continues_from_the_last_checkpoint(resumed):
    m = re.search(r"resuming .* at step (\d+)", resumed["proc"].stdout)
    assert m, resumed["proc"].stdout[-2000:]
    k = int(m.group(1))
    assert 0 < k < 40 and k % 5 == 0  # a --save-every 5 checkpoint
    assert resumed["log"][-1]["step"] == 40
    assert (resumed["out"] / "metrics.json").exists()


def test_resume_repeats_the_steps_after_the_checkpoint_exactly(resumed):
    # Steps between the checkpoint and the kill ran twice: once before the kill, once after the
    # resume, from the same saved state (weights, optimizer, scheduler) and the same batches.
    k = int(re.search(r"at step (\d+)", resumed["proc"].stdout).group(1))
    before = {r["step"]: r for r in resumed["killed_log"] if r["step"] > k}
    after = {r["step"]: r for r in resumed["log"]}  # the last row of each step is the resumed run's
    assert before, "the kill must land after some post-checkpoint steps for this comparison"
    for step, row in before.items():
        for key in ("loss", "kl", "ce", "lr"):
            assert after[step][key] == pytest.approx(row[key], rel=1e-6, abs=1e-9), (step, key)


def test_resumed_log_has_each_step_once(resumed):
    # train_log.jsonl is the per-step record of the run; the rows the killed process logged after
    # its last checkpoint were redone after the resume and must not remain as duplicates.
    assert [r["step"] for r in resumed["log"]] == list(range(0, 41))


@pytest.fixture(scope="session")
def run_tasks(cli_root, finished_run) -> tuple[Path, subprocess.CompletedProcess]:
    """lm-eval tasks made from the finished run's held-out documents (its data, split and tokenizer)."""
    out = cli_root["root"] / "tasks"
    return out, ok(wavedistill_here("make-tasks", "--model", finished_run[0], "--output-dir", out))


@pytest.fixture(scope="session")
def bad_inputs(cli_root, finished_run, other_base, run_tasks) -> dict:
    root = cli_root["root"] / "bad_inputs"
    root.mkdir()
    short = root / "short.txt"
    short.write_text("once upon a time\n\nthe cat\n\nthe dog\n\nthe bird\n\nthe frog\n")
    broken = root / "broken.jsonl"
    broken.write_text('{"text": "once upon a time"}\n{"text": \n')
    config = root / "config.yaml"
    config.write_text("lr: 0.001\nnot_a_key: 1\n")
    corrupt = root / "corrupt_student"
    shutil.copytree(finished_run[0] / "adapter", corrupt / "adapter")
    (corrupt / "adapter" / "adapter_model.safetensors").write_bytes(b"this is not safetensors" * 20)
    tasks = root / "tasks_other_tokenizer"
    shutil.copytree(run_tasks[0], tasks)
    manifest = json.loads((tasks / "wavedistill_tasks.json").read_text())
    (tasks / "wavedistill_tasks.json").write_text(json.dumps({**manifest, "tokenizer": "0" * 16, "model": "another"}))
    for name, text in BAD_YAML.items():
        (root / f"{name}.yaml").write_text(text[0])
    binary = root / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")
    wrong_types = root / "wrong_types"
    shutil.copytree(finished_run[0] / "adapter", wrong_types / "adapter")
    adapter_config = json.loads((wrong_types / "adapter" / "adapter_config.json").read_text())
    (wrong_types / "adapter" / "adapter_config.json").write_text(json.dumps({**adapter_config, "layers": "0,1"}))
    return {"root": root, "short": short, "broken": broken, "config": config, "corrupt": corrupt,
            "gpt2": write_tiny_gpt2(root / "gpt2", cli_root["corpus"]), "other": other_base, "tasks": tasks,
            "run_tasks": run_tasks[0], "binary": binary, "a_file": a_file, "foreign": foreign,
            "wrong_types": wrong_types}


# name -> (YAML text, substrings of the error): values of the wrong type, as a config file can hold them
BAD_YAML = {
    "lr-fast": ("lr: fast\n", ["lr must be a finite number", "'fast'"]),
    "seq-len-string": ('seq_len: "32"\n', ["seq_len must be an integer", "'32'"]),
    "batch-size-list": ("batch_size: [1, 2]\n", ["batch_size must be an integer"]),
    "layers-int": ("layers: 3\n", ["layers must be a list of integers"]),
    "mixer-kwargs-int": ("mixer_kwargs: 5\n", ["mixer_kwargs must be a mapping"]),
    "numeric-key": ("1: 2\n", ["keys that are not names", "[1]"]),
    "loss-weight-string": ("loss:\n  kl_weight: x\n", ["kl_weight must be a finite number", "'x'"]),
    "epochs-nan": ("epochs: .nan\n", ["epochs must be a finite number"]),
    "max-steps-float": ("max_steps: 2.5\n", ["max_steps must be an integer", "2.5"]),
    "deep-nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
}


# name -> (argv from (cli_root, finished run folder, bad_inputs, fresh output dir), substrings of the error)
BAD_INPUTS = {
    "unknown-mixer": (lambda c, run, b, o: distill_args(c, o, "--wave-type", "nope"), ["'nope'", *list_mixers()]),
    "removed-alpha-flag": (lambda c, run, b, o: distill_args(c, o, "--alpha", 0.5),
                           ["--alpha was replaced by --kl-weight and --ce-weight"]),
    "missing-teacher": (lambda c, run, b, o: ["distill", "--teacher", b["root"] / "no_such_teacher", "--data",
                                              c["corpus"], "--output-dir", o, *SHORT_RUN], ["does not exist"]),
    "unsupported-architecture": (lambda c, run, b, o: ["distill", "--teacher", b["gpt2"], "--data", c["corpus"],
                                                       "--output-dir", o, *SHORT_RUN], ["gpt2", "supported"]),
    "data-too-short": (lambda c, run, b, o: ["distill", "--teacher", c["teacher"], "--data", b["short"],
                                             "--output-dir", o, *SHORT_RUN], ["fewer than one window"]),
    "malformed-data-file": (lambda c, run, b, o: ["distill", "--teacher", c["teacher"], "--data", b["broken"],
                                                  "--output-dir", o, *SHORT_RUN], ["broken.jsonl"]),
    "unknown-config-key": (lambda c, run, b, o: distill_args(c, o, "--config", b["config"]), ["not_a_key"]),
    "layer-out-of-range": (lambda c, run, b, o: distill_args(c, o, "--layers", "0,5"), ["out of range"]),
    "unknown-mixer-kwarg": (lambda c, run, b, o: distill_args(c, o, "--mixer-kwargs", '{"nope": 1}'), ["nope"]),
    "out-of-range-mixer-setting": (lambda c, run, b, o: distill_args(c, o, "--mixer-kwargs", '{"kernel_len": -5}'),
                                   ["kernel_len", ">= 1", "-5"]),
    "resume-without-checkpoint": (lambda c, run, b, o: distill_args(c, o, "--resume"), ["checkpoint"]),
    "unknown-stage-kind": (lambda c, run, b, o: distill_args(c, o, "--stages", "transfer:2,distil:3"),
                           ["'distil'", "transfer", "progressive", "handoff"]),
    "fit-stage-on-a-mixer-without-a-kernel": (lambda c, run, b, o: distill_args(c, o, "--stages", "fit,kd:2",
                                                                              "--wave-type", "fnet"),
                                              ["fit stage", "fnet"]),
    "lora-and-unfrozen-mlps": (lambda c, run, b, o: distill_args(c, o, "--lora-mlp", "4", "--unfreeze-mlps"),
                               ["one recovery"]),
    "corrupt-adapter": (lambda c, run, b, o: ["eval", "--student", b["corrupt"], "--data", c["corpus"],
                                              "--seq-len", 32, "--output-dir", o], ["corrupt"]),
    "adapter-for-other-base": (lambda c, run, b, o: ["eval", "--student", run, "--base", b["other"], "--data",
                                                     c["corpus"], "--seq-len", 32, "--output-dir", o],
                               ["fingerprint"]),
    "cache-above-the-sequence": (lambda c, run, b, o: distill_args(c, o, "--wave-type", "rotary_gla", "--mixer-kwargs",
                                                                   '{"window": 24, "sinks": 8}'),
                                 ["window + sinks = 32", "below --seq-len"]),
    "negative-cache": (lambda c, run, b, o: distill_args(c, o, "--wave-type", "rotary_gla", "--mixer-kwargs",
                                                         '{"window": 4, "sinks": -1}'), ["sinks must be >= 0"]),
    "select-keep-0": (lambda c, run, b, o: ["layers", "--from-run", run, "--select-keep", 0, "--output-dir", o],
                      ["--select-keep must be at least 1 and fewer than the teacher's layers, got 0"]),
    "select-keep-every-layer": (lambda c, run, b, o: ["layers", "--from-run", run, "--select-keep", 2,
                                                      "--output-dir", o], ["fewer than the teacher's layers, got 2"]),
    "from-run-with-settings": (lambda c, run, b, o: ["layers", "--from-run", run, "--mixer", "fnet", "--output-dir",
                                                     o], ["drop wave_type"]),
    "from-run-not-a-run": (lambda c, run, b, o: ["layers", "--from-run", b["root"], "--output-dir", o],
                           ["not a finished distill run folder"]),
    "unknown-lm-eval-task": (lambda c, run, b, o: ["lm-eval", run, "--tasks", "story_endng", "--include-path",
                                                   b["run_tasks"], "--output-dir", o],
                             ["'story_endng'", "final_word, story_ending", "hellaswag"]),
    "lm-eval-limit-0": (lambda c, run, b, o: ["lm-eval", run, "--tasks", "story_ending", "--include-path",
                                              b["run_tasks"], "--limit", 0, "--output-dir", o], ["--limit", ">= 1"]),
    "lm-eval-tasks-of-another-tokenizer": (lambda c, run, b, o: ["lm-eval", run, "--tasks", "story_ending",
                                                                 "--include-path", b["tasks"], "--output-dir", o],
                                           ["tokenizer of another", "make-tasks --model"]),
    "lm-eval-no-mixing-of-a-plain-model": (lambda c, run, b, o: ["lm-eval", c["teacher"], "--tasks", "story_ending",
                                                                 "--include-path", b["run_tasks"], "--with-no-mixing",
                                                                 "--output-dir", o], ["plain model"]),
    "suite-probe-longer-than-the-context": (lambda c, run, b, o: ["eval", "--student", run, "--suite", "recall",
                                                                  "--induction-lengths", 100, "--output-dir", o],
                                            ["induction", "201", "context of 128"]),
    "suite-zero-trials": (lambda c, run, b, o: ["eval", "--student", run, "--suite", "recall", "--trials", 0,
                                                "--output-dir", o], ["--trials must be at least 1"]),
    "teacher-for-a-converted-student": (lambda c, run, b, o: ["eval", "--student", run, "--teacher", b["other"],
                                                              "--output-dir", o], ["--teacher is for a separate",
                                                                                   "--base"]),
    "report-suite-of-a-run-without-one": (lambda c, run, b, o: ["report", "--suite", run], ["no suite/suite.json",
                                                                                          "eval --suite"]),
    "unknown-suite-part": (lambda c, run, b, o: ["eval", "--student", run, "--suite", "recal", "--output-dir", o],
                           ["'recal'", "recall, length, lm-eval"]),
    "suite-length-past-the-held-out-text": (lambda c, run, b, o: ["eval", "--student", run, "--suite", "length",
                                                                  "--lengths", 100000, "--output-dir", o],
                                            ["fewer than one window of 100000"]),
    "make-tasks-into-a-folder-with-other-files": (lambda c, run, b, o: ["make-tasks", "--model", run, "--output-dir",
                                                                        b["root"]], ["holds other files"]),
    **{f"yaml-{name}": ((lambda name: lambda c, run, b, o: ["distill", "--teacher", c["teacher"], "--data",
                                                             c["corpus"], "--output-dir", o, "--config",
                                                             b["root"] / f"{name}.yaml"])(name), needles)
       for name, (_, needles) in BAD_YAML.items()},
    "save-every-0": (lambda c, run, b, o: distill_args(c, o, "--save-every", 0), ["save_every", ">= 1"]),
    "eval-every-0": (lambda c, run, b, o: distill_args(c, o, "--eval-every", 0), ["eval_every", ">= 1"]),
    "generate-zero-tokens": (lambda c, run, b, o: ["generate", "--student", run, "--prompt", "once",
                                                   "--max-new-tokens", 0], ["--max-new-tokens must be at least 1"]),
    "generate-negative-tokens": (lambda c, run, b, o: ["generate", "--student", run, "--prompt", "once",
                                                       "--max-new-tokens", -1], ["--max-new-tokens", "-1"]),
    "generate-negative-temperature": (lambda c, run, b, o: ["generate", "--student", run, "--prompt", "once",
                                                            "--temperature", -1], ["--temperature must be >= 0"]),
    "output-dir-is-a-file": (lambda c, run, b, o: distill_args(c, b["a_file"]), ["is a file, not a folder"]),
    "output-dir-with-foreign-files": (lambda c, run, b, o: distill_args(c, b["foreign"]),
                                      ["did not write (notes.txt)", "--overwrite"]),
    "data-is-a-folder": (lambda c, run, b, o: ["distill", "--teacher", c["teacher"], "--data", b["root"],
                                               "--output-dir", o, *SHORT_RUN], ["is a folder"]),
    "data-not-utf8": (lambda c, run, b, o: ["distill", "--teacher", c["teacher"], "--data", b["binary"],
                                            "--output-dir", o, *SHORT_RUN], ["not UTF-8"]),
    "cache-teacher-data-not-utf8": (lambda c, run, b, o: ["cache-teacher", "--teacher", c["teacher"], "--data",
                                                          b["binary"], "--output-dir", o, "--seq-len", 32],
                                    ["not UTF-8"]),
    "eval-data-not-utf8": (lambda c, run, b, o: ["eval", "--student", run, "--data", b["binary"], "--output-dir", o],
                           ["not UTF-8"]),
    "adapter-config-wrong-types": (lambda c, run, b, o: ["generate", "--student", b["wrong_types"], "--prompt",
                                                         "once"], ["wrong type", "layers"]),
    "resume-a-finished-run": (lambda c, run, b, o: distill_args(c, run, "--resume"),
                              ["finished run", "--max-steps larger than its 6"]),
    "eval-into-another-run": (lambda c, run, b, o: ["eval", "--student", b["corrupt"], "--output-dir", run],
                              ["holds another run", "eval_metrics.json"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error(case, cli_root, finished_run, bad_inputs, tmp_path):
    make_argv, needles = BAD_INPUTS[case]
    before = tree_hashes(finished_run[0]), tree_hashes(bad_inputs["root"])
    proc = wavedistill_here(*make_argv(cli_root, finished_run[0], bad_inputs, tmp_path / "out"))
    assert_one_line_error(proc, *needles)
    # every file that existed before is byte-for-byte unchanged, and a failed start leaves nothing behind
    assert (tree_hashes(finished_run[0]), tree_hashes(bad_inputs["root"])) == before
    assert not (tmp_path / "out").exists()


def test_distill_refuses_to_overwrite_a_finished_run_and_touches_nothing(cli_root, finished_run):
    out, _ = finished_run
    before = tree_hashes(out)
    proc = wavedistill_here(*distill_args(cli_root, out))
    assert_one_line_error(proc, "already holds a `wavedistill distill` run", "--resume", "--overwrite")
    assert tree_hashes(out) == before


# A resume keeps the run's settings: each of these shapes the run, so changing it on --resume is refused.
SHAPING = {"seq_len": ("--seq-len", 64), "batch_size": ("--batch-size", 2), "seed": ("--seed", 7),
           "lr": ("--lr", 0.5), "wave_type": ("--wave-type", "fnet"), "loss": ("--kl-weight", 0.5),
           "eval_every": ("--eval-every", 2), "max_steps": ("--max-steps", 3)}


@pytest.mark.parametrize("setting", list(SHAPING))
def test_resume_with_a_shaping_setting_changed_is_refused_and_touches_nothing(setting, cli_root, finished_run):
    out = finished_run[0]
    before = tree_hashes(out)
    flag, value = SHAPING[setting]
    proc = wavedistill_here(*distill_args(cli_root, out, "--resume", flag, value))
    line = assert_one_line_error(proc, setting, "--resume")
    assert ("may only grow" in line) if setting == "max_steps" else "config.yaml" in line
    assert tree_hashes(out) == before


def test_resume_continues_a_finished_run_with_more_steps_and_the_settings_allowed_to_change(finished_run, tmp_path):
    # Only --output-dir, --resume and what may change are given: the rest comes from the run's config.yaml.
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    first = read_log(out)
    proc = ok(wavedistill_here("distill", "--output-dir", out, "--resume", "--max-steps", 9, "--save-every", 2))
    assert "at step 6" in proc.stdout
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(10)) and log[:7] == first  # steps 7-9 added, 0-6 kept as they were
    assert [r["stage_step"] for r in log[7:]] == [7, 8, 9]  # inside the same stage, with its optimizer
    config = (out / "config.yaml").read_text()
    assert "max_steps: 9" in config and "save_every: 2" in config and "seq_len: 32" in config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 9 and metrics["selected_step"] in (0, 3, 6, 9)


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_resume(finished_run, tmp_path):
    # what a kill -9 before the first checkpoint leaves: the manifest, config.yaml, a log, no checkpoint
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    for name in ("checkpoint", "adapter"):
        shutil.rmtree(out / name)
    (out / "metrics.json").unlink()
    proc = wavedistill_here("distill", "--output-dir", out)
    assert_one_line_error(proc, "stopped before its first checkpoint", "--overwrite")
    proc = ok(wavedistill_here("distill", "--output-dir", out, "--resume"))
    assert "no checkpoint yet: starting its run again from step 0" in proc.stdout
    assert [r["step"] for r in read_log(out)] == list(range(7)) and (out / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["state-truncated", "state-random", "state-missing", "weights-truncated",
                                    "weights-empty"])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(damage, cli_root, finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    (out / "metrics.json").unlink()  # an unfinished run: --resume reads its checkpoint
    name = "state.pt" if damage.startswith("state") else "adapter_model.safetensors"
    path = out / "checkpoint" / name
    data = path.read_bytes()
    {"truncated": lambda: path.write_bytes(data[: len(data) // 2]), "empty": lambda: path.write_bytes(b""),
     "missing": path.unlink, "random": lambda: path.write_bytes(os.urandom(len(data)))}[damage.split("-")[1]]()
    before = tree_hashes(out)
    proc = wavedistill_here(*distill_args(cli_root, out, "--resume", "--max-steps", 9))
    assert_one_line_error(proc, name)
    assert tree_hashes(out) == before


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(cli_root, tmp_path):
    # the fit stage refuses fnet only when it starts, after the folder was claimed and config.yaml written
    out = tmp_path / "run"
    proc = wavedistill_here(*distill_args(cli_root, out, "--stages", "fit,kd:2", "--wave-type", "fnet"))
    assert_one_line_error(proc, "fit stage")
    assert not out.exists()


def test_overwrite_starts_a_used_folder_again(cli_root, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    ok(wavedistill_here(*distill_args(cli_root, out, "--overwrite", "--max-steps", 2)))
    assert not (out / "notes.txt").exists() and (out / "metrics.json").exists()
    manifest = json.loads((out / "wavedistill_run.json").read_text())
    assert manifest["command"] == "distill" and manifest["settings"]["max_steps"] == 2


def test_eval_writes_beside_its_own_run_under_other_names_however_the_path_is_spelled(cli_root, finished_run,
                                                                                   tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    before = tree_hashes(run)
    proc = ok(wavedistill_here("eval", "--student", run, "--output-dir", f"{run}/", "--max-windows", 2))
    assert "eval_metrics.json" in proc.stdout
    after = tree_hashes(run)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["eval_metrics.json", "eval_samples.md"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    # A relative --output-dir, as in the README's `wavedistill demo` (default runs/demo).
    cwd = tmp_path_factory.mktemp("demo_cwd")
    ok(wavedistill("demo", "--output-dir", "demo", "--steps", 10, "--teacher-steps", 10, "--stories", 200, cwd=cwd))
    return cwd / "demo"


def test_demo_runs_end_to_end(demo_run):
    metrics = json.loads((demo_run / "student_learned_gate" / "metrics.json").read_text())
    assert metrics["positions"] > 0 and metrics["steps"] == 10
    assert (demo_run / "teacher" / "config.json").exists()


def test_a_second_demo_names_its_own_flag_and_the_next_steps_find_the_student(demo_run):
    before = tree_hashes(demo_run)
    proc = wavedistill_here("demo", "--output-dir", demo_run, "--steps", 10)
    assert_one_line_error(proc, "student_learned_gate", "wavedistill demo --overwrite")
    # `report runs/*` after the demo: the demo folder stands for the run in it; a folder that is no run is skipped
    (demo_run.parent / "notes").mkdir(exist_ok=True)
    report = wavedistill_here("report", demo_run, demo_run.parent / "notes")
    assert report.returncode == 0 and "| student_learned_gate |" in report.stdout
    assert "skipping" in report.stderr and "notes" in report.stderr
    proc = wavedistill_here("generate", "--student", demo_run, "--prompt", "once")
    assert_one_line_error(proc, "not a wavedistill adapter", "student_learned_gate")
    assert tree_hashes(demo_run) == before


def test_adapters_and_checkpoints_are_ordinary_readable_files(finished_run):
    for path in ("adapter/adapter_model.safetensors", "checkpoint/adapter_model.safetensors"):
        mode = (finished_run[0] / path).stat().st_mode & 0o777
        assert mode == 0o666 & ~current_umask(), (path, oct(mode))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_demo_student_loads_from_another_directory(demo_run):
    # The adapter names its base model; a run made with relative paths must still load when the
    # user is somewhere else (here: the pytest working directory), without --base.
    proc = wavedistill("generate", "--student", demo_run / "student_learned_gate", "--prompt", "once upon",
                       "--max-new-tokens", 4)
    ok(proc)


def test_hybrid_keeps_attention_layers_and_says_which(cli_root, tmp_path):
    # The tiny teacher has 2 layers: keep layer 0 as softmax attention, convert layer 1.
    out = tmp_path / "hybrid"
    ok(wavedistill_here(*distill_args(cli_root, out, "--keep-attention", "0")))
    metrics = json.loads((out / "metrics.json").read_text())
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert metrics["kept_attention_layers"] == [0] and metrics["layers"] == [1]
    assert adapter["layers"] == [1]


def test_layers_report_ranks_every_layer_with_a_table_and_a_plot(cli_root, tmp_path):
    out = tmp_path / "layers"
    proc = ok(wavedistill_here("layers", "--teacher", cli_root["teacher"], "--data", cli_root["corpus"],
                               "--seq-len", 32, "--batch-size", 4, "--transfer-steps", 4, "--eval-every", 2,
                               "--output-dir", out, "--select-keep", 1))
    report = json.loads((out / "layers.json").read_text())
    assert [r["layer"] for r in report["rows"]] == [0, 1] and report["split"] == "val"
    # the greedy choice: the layer whose attention, put back, gives the lowest val KL; a list distill takes as is
    start, chosen = report["selection"]
    assert start["kept"] == [] and set(chosen["candidates"]) == {"0", "1"}
    best = min(chosen["candidates"], key=chosen["candidates"].get)
    assert chosen["kept"] == report["keep_attention"] == [int(best)] and chosen["kl"] == chosen["candidates"][best]
    keep = (out / "keep_attention.txt").read_text().strip()
    assert keep == best and f"--keep-attention {keep}" in proc.stdout and "| 1 | " + best in (out / "layers.md").read_text()
    from wavedistill.cli.args import distill_config
    from wavedistill.cli.parser import build_parser

    assert distill_config(build_parser().parse_args(["distill", "--teacher", "t", "--keep-attention", keep])
                          ).keep_attention == [int(best)]
    # the same report from the finished transfer run, without training
    again = ok(wavedistill_here("layers", "--from-run", out / "transfer", "--select-keep", 1, "--output-dir",
                                tmp_path / "again"))
    assert json.loads((tmp_path / "again" / "layers.json").read_text())["selection"] == report["selection"]
    assert "select-keep: keep layer" in again.stdout
    for r in report["rows"]:
        assert r["transfer_loss"] > 0 and r["kl_only_this_layer"] > 0 and r["kl_attention_zeroed"] > 0
    table = (out / "layers.md").read_text()
    assert table.split("## Layers to keep")[0].count("\n| ") == 2 and "hardness rank" in table
    assert (out / "layers.png").stat().st_size > 1000
    assert (out / "transfer" / "metrics.json").exists()  # the transfer run is an ordinary run folder
    assert "layer 0: transfer loss" in proc.stdout
    # An interrupted report (no layers.json) is finished from its own transfer run, never one trained otherwise.
    (out / "layers.json").unlink()
    before = tree_hashes(out)
    proc = wavedistill_here("layers", "--teacher", cli_root["teacher"], "--data", cli_root["corpus"], "--seq-len", 32,
                            "--batch-size", 4, "--transfer-steps", 4, "--eval-every", 2, "--output-dir", out,
                            "--mixer", "fnet")
    assert_one_line_error(proc, "holds a run with other settings (wave_type)")
    assert tree_hashes(out) == before


def test_compare_runs_each_mixer_once_and_tabulates_their_metrics(cli_root, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--teacher", cli_root["teacher"], "--data", cli_root["corpus"], "--seq-len", 32, "--batch-size",
            4, "--stages", "transfer:2,kd:2", "--eval-every", 2, "--mixers", "learned_gate,phase_shift",
            "--output-dir", out]
    ok(wavedistill_here(*args))
    table = (out / "compare.md").read_text()
    assert "| learned_gate | learned_gate | transfer → kd |" in table and "| phase_shift | phase_shift |" in table
    assert (out / "top5_vs_tokens.png").stat().st_size > 1000
    before = tree_hashes(out / "learned_gate")
    again = ok(wavedistill_here(*args))  # finished runs are reused, not redone
    assert again.stdout.count("reusing the finished run") == 2 and tree_hashes(out / "learned_gate") == before
    other = wavedistill_here(*[a if a != "transfer:2,kd:2" else "kd:3" for a in args])
    assert_one_line_error(other, "other settings", "stages")
    # a mixer's run killed before its first checkpoint (what kill -9 leaves) is started again, not refused
    for name in ("checkpoint", "adapter"):
        shutil.rmtree(out / "phase_shift" / name)
    (out / "phase_shift" / "metrics.json").unlink()
    again = ok(wavedistill_here(*args))
    assert "no checkpoint yet: starting its run again" in again.stdout and (out / "phase_shift" / "metrics.json").exists()


def test_loss_flags_set_the_kd_loss_of_every_kd_stage():
    from wavedistill.cli.args import distill_config
    from wavedistill.cli.parser import build_parser
    from wavedistill.training.config import recipe_stages
    from wavedistill.training.recipes import KDLoss, KDStage

    args = build_parser().parse_args(["kd", "--teacher", "t", "--student", "tiny", "--max-steps", "5",
                                      "--hidden-weight", "0.2", "--hidden-loss", "cosine", "--divergence", "jsd",
                                      "--label-smoothing", "0.1", "--attention-window", "16", "--ce-weight", "0.3"])
    cfg = distill_config(args)
    flags = {"hidden_weight": 0.2, "hidden_loss": "cosine", "divergence": "jsd", "label_smoothing": 0.1,
             "attention_window": 16, "ce_weight": 0.3}
    assert cfg.loss == KDLoss(**flags)  # parsed once, when the config is made
    assert recipe_stages(cfg) == [KDStage(steps=5, **flags)]


def test_make_tasks_draws_from_the_runs_test_split_and_says_where(run_tasks, finished_run):
    out, proc = run_tasks
    manifest = json.loads((out / "wavedistill_tasks.json").read_text())
    split = json.loads((finished_run[0] / "data_split.json").read_text())
    assert manifest["split"] == "test" and manifest["documents"] == split["documents"]["test"]
    assert all(n > 0 for n in manifest["tasks"].values())
    assert f"written to {out}" in proc.stdout and "--include-path" in proc.stdout


def test_lm_eval_scores_student_teacher_and_no_mixing_on_the_same_examples(finished_run, run_tasks, tmp_path):
    out = tmp_path / "lm"
    proc = ok(wavedistill("lm-eval", finished_run[0], "--tasks", "story_ending,final_word", "--include-path",
                          run_tasks[0], "--limit", 3, "--with-teacher", "--with-no-mixing", "--batch-size", 4,
                          "--output-dir", out))
    for name in ("teacher", "no_mixing", "student"):
        samples = [json.loads(line) for line in (out / f"{name}_samples.jsonl").read_text().splitlines()]
        assert sorted((r["task"], r["doc_id"]) for r in samples) == sorted(
            (t, i) for t in ("story_ending", "final_word") for i in range(3))
    table = (out / "table.md").read_text()
    assert "| story_ending | acc_norm ↑ | 3 |" in table and "| final_word | perplexity ↓ | 3 |" in table
    assert f"written to {out}" in proc.stdout
    # the same evaluation again replaces its own files; another one in the same folder is refused
    ok(wavedistill_here("lm-eval", finished_run[0], "--tasks", "story_ending,final_word", "--include-path",
                        run_tasks[0], "--limit", 3, "--with-teacher", "--with-no-mixing", "--batch-size", 4,
                        "--output-dir", out))
    before = tree_hashes(out)
    other = wavedistill_here("lm-eval", finished_run[0], "--tasks", "final_word", "--include-path", run_tasks[0],
                             "--limit", 2, "--output-dir", out)
    assert_one_line_error(other, "another evaluation", "--overwrite")
    assert tree_hashes(out) == before


def test_eval_suite_writes_recall_length_and_lm_eval_and_report_shows_them(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    before = (run / "metrics.json").read_text()
    proc = ok(wavedistill("eval", "--student", run, "--suite", "recall,length,lm-eval", "--sequences", 4,
                          "--passages", 4, "--trials", 3, "--decode-tokens", 2, "--lm-eval-limit", 3))
    suite = run / "suite"
    assert f"written to {suite}" in proc.stdout
    assert (run / "metrics.json").read_text() == before  # the run's own results are untouched
    recall = json.loads((suite / "recall.json").read_text())
    assert list(recall["induction"]["lengths"]) == ["16", "32"]  # 2L + 1 <= 128, the tiny teacher's context
    assert recall["induction"]["skipped_lengths"] == [64, 128, 256]
    assert set(recall["copy_positions"]["agreement_needs_context"]) == {"no_mixing", "student"}
    assert recall["passkey"]["forms"]["name"]["fillers"]["0"]["teacher"]["n"] == 3
    length = json.loads((suite / "length.json").read_text())
    assert list(length["profile"]["lengths"]) == ["32", "64", "128", "256"]  # 1x, 2x, 4x, 2x the context
    assert length["profile"]["lengths"]["256"]["kl"][-1] is None  # past the teacher's context
    lm = json.loads((suite / "lm_eval.json").read_text())
    assert set(lm["headline"]) == {"teacher", "no_mixing", "student"}
    assert (suite / "tasks" / "story_ending.yaml").exists() and (suite / "lm_eval" / "student.json").exists()
    md = (suite / "suite.md").read_text()
    for heading in ("## Recall", "### Induction", "### Copy positions", "### Repeated held-out passages", "### Passkey",
                    "## Context length", "decode ms / token after 256", "## lm-eval"):
        assert heading in md
    assert (suite / "copy_distance.png").stat().st_size > 1000 and (suite / "length_ppl.png").stat().st_size > 1000
    report = ok(wavedistill_here("report", run)).stdout
    assert "induction acc L=32" in report and "story_ending acc_norm (teacher)" in report
    assert "suite/suite.md" in report
    side_by_side = ok(wavedistill_here("report", "--suite", run, run)).stdout
    for heading in ("**Recall**", "**Passkey, name form**", "**Perplexity by position, windows of 256 tokens**",
                    "| decode ms |", "**lm-eval**", "final_word acc − teacher (paired)"):
        assert heading in side_by_side
    assert side_by_side.count("| run |") == 2 * side_by_side.count("| teacher |")  # a student row per run per table


@pytest.mark.parametrize("command", ["lm-eval", "suite"])
def test_without_lm_eval_the_commands_say_how_to_install_it(command, finished_run, run_tasks, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails as if it were not installed
    argv = (["lm-eval", finished_run[0], "--tasks", "story_ending", "--include-path", run_tasks[0]]
            if command == "lm-eval" else ["eval", "--student", finished_run[0], "--suite", "recall,lm-eval"])
    proc = wavedistill_here(*argv, "--output-dir", tmp_path / "out")
    assert_one_line_error(proc, "lm-eval is not installed", 'pip install -e ".[eval]"')
    assert not (tmp_path / "out").exists()


def test_activation_checkpointing_trains_what_a_plain_backward_trains(cli_root, finished_run, tmp_path):
    # --grad-checkpointing recomputes each decoder layer in backward (transformers' activation_checkpointing_enable,
    # non-reentrant): the same losses step by step as the finished run without it, and no deprecation warning.
    import warnings

    out = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ok(wavedistill_here(*distill_args(cli_root, out, "--grad-checkpointing")))
    plain, ckpt = read_log(finished_run[0]), read_log(out)
    assert [r["step"] for r in ckpt] == [r["step"] for r in plain]
    for a, b in zip(plain, ckpt):
        for key in ("loss", "val_kl"):
            assert (key in a) == (key in b) and (key not in a or b[key] == pytest.approx(a[key], rel=1e-5)), (a, b)
    assert sum("loss" in r for r in ckpt) == 6
