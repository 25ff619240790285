"""The training loop under accelerate: 2 processes (torchrun, gloo on CPU) train what 1 process trains.

Every process draws the same global batch and trains its share of the rows, so for every stage
(transfer, progressive, hand-off, kd) the losses of a 2-process run, a 1-process run and a 1-process
run with 2 accumulation steps agree; a 2-process run killed with SIGKILL and resumed (with 2
processes) ends where an uninterrupted one ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.cli.test_main import ENV, SLOW_WAVEDISTILL, assert_one_line_error, read_log

TORCHRUN = Path(sys.executable).with_name("torchrun")
SHORT = ["--seq-len", "32", "--batch-size", "4", "--eval-every", "2", "--save-every", "2"]
# Every training stage runs under the launcher: 2 transfer, 2 x 2 progressive (two layers), 2 handoff, 2 kd steps.
RECIPE = ["--stages", "transfer:2,progressive:2,handoff:2,kd:2"]


def distill(tiny_teacher, out, *extra, processes: int = 1, script: str | None = None, wait: bool = True):
    head = ([str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", str(29500 + os.getpid() % 1000)]
            if processes > 1 else [sys.executable])
    body = [script] if script else ["-m", "wavedistill"]
    args = [*head, *body, "distill", "--teacher", str(tiny_teacher["teacher"]), "--data", str(tiny_teacher["corpus"]),
            "--output-dir", str(out), *SHORT, *map(str, extra)]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stderr[-3000:]}"
    return stdout


def losses(out) -> list[float]:
    return [r["loss"] for r in read_log(out) if "loss" in r]


@pytest.fixture(scope="module")
def two_process_run(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("launch") / "two"
    distill(tiny_teacher, out, *RECIPE, processes=2)
    return out


def test_two_processes_and_accumulation_train_what_one_process_trains(tiny_teacher, two_process_run, tmp_path):
    distill(tiny_teacher, tmp_path / "one", *RECIPE)
    distill(tiny_teacher, tmp_path / "accum", *RECIPE, "--grad-accum", 2)
    one = losses(tmp_path / "one")
    assert len(one) == 10
    for other in (losses(two_process_run), losses(tmp_path / "accum")):
        assert other == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert yaml.safe_load((two_process_run / "config.yaml").read_text())["num_processes"] == 2
    assert yaml.safe_load((tmp_path / "one" / "config.yaml").read_text())["num_processes"] == 1


def test_a_two_process_run_killed_and_resumed_ends_where_an_uninterrupted_one_ends(tiny_teacher, two_process_run,
                                                                                  tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WAVEDISTILL)  # 0.3 s per batch, so the kill lands between two checkpoints
    out = tmp_path / "killed"
    proc = distill(tiny_teacher, out, *RECIPE, processes=2, script=str(script), wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint").is_dir() and any(r.get("step", 0) >= 3 for r in _rows(out)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    kill_tree(proc.pid)  # torchrun and both workers, no chance to clean up
    proc.wait()
    distill(tiny_teacher, out, *RECIPE, "--resume", processes=2)
    for folder in ("checkpoint", "adapter"):
        mine, ref = (load_file(d / folder / "adapter_model.safetensors") for d in (out, two_process_run))
        assert mine.keys() == ref.keys()
        for k in mine:
            torch.testing.assert_close(mine[k], ref[k], rtol=0, atol=1e-6, msg=f"{folder}/{k}")
    assert [r["step"] for r in _rows(out)] == [r["step"] for r in _rows(two_process_run)]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it. Not ``os.killpg``: torchrun starts each worker in a session of
    its own (torch elastic's subprocess handler), so killing torchrun's group left the workers training on, and
    finishing the run in the folder the resumed run was starting in."""
    tree, i = [pid], 0
    while i < len(tree):  # collect first: a process killed before its children would hand them to init
        tree += _children(tree[i])
        i += 1
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:  # ended by itself meanwhile
            pass


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except (OSError, IndexError):  # not a process, or gone
            continue
        if fields[1] == str(pid):
            out.append(int(entry))
    return out


def _rows(out) -> list[dict]:
    path = out / "train_log.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row being written right now
            pass
    return rows


@pytest.mark.parametrize("flags,needle", [(["--grad-accum", "0"], "grad_accum must be >= 1"),
                                          (["--grad-accum", "3"], "divide into 1 processes x 3")])
def test_bad_accumulation_is_a_one_line_error_and_writes_nothing(tiny_teacher, tmp_path, flags, needle):
    from tests.cli.test_main import wavedistill_here

    out = tmp_path / "out"
    proc = wavedistill_here("distill", "--teacher", tiny_teacher["teacher"], "--data", tiny_teacher["corpus"],
                            "--output-dir", out, *SHORT, "--max-steps", 2, *flags)
    assert_one_line_error(proc, needle)
    assert not out.exists()


def test_the_lab_trains_a_seed_with_two_processes_as_with_one(tmp_path):
    args = ["lab", "modular", "--mixer", "learned_gate", "--p", 11, "--train-frac", 0.5, "--steps", 6,
            "--eval-every", 3, "--d-model", 32, "--d-mlp", 64]
    runs = {}
    for n in (1, 2):
        head = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(29600 + os.getpid() % 1000)] \
            if n == 2 else [sys.executable]
        out = tmp_path / f"p{n}"
        proc = subprocess.run([*head, "-m", "wavedistill", *map(str, args), "--output-dir", str(out)], env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = [json.loads(line) for line in (out / "seed_0" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in runs[1]] == [r["step"] for r in runs[2]]
    for a, b in zip(runs[1], runs[2]):
        assert b["train_batch_loss"] == pytest.approx(a["train_batch_loss"], rel=1e-5)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
