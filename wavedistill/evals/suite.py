"""``wavedistill eval --suite recall,length,lm-eval``: the measures users judge a converted model by, in one place.

Each part scores the teacher, the no-mixing baseline and the student on the run's held-out text and writes
its JSON into the suite folder (``RUN/suite`` or ``OUTPUT_DIR/suite``); after every part, ``suite.md``
(all tables) and the plots are written again from whatever parts the folder holds. ``suite.json`` names the
student, its mixer attributes and the held-out text, so a folder is never filled with another student's
results.

* ``recall``: :mod:`wavedistill.evals.recall` (induction, copy positions, repeated passages, passkey);
* ``length``: :mod:`wavedistill.evals.length` (perplexity / KL by position at 1x-4x the training length and
  past the teacher's context, decode time per token);
* ``lm-eval``: ``story_ending`` and ``final_word`` (:mod:`wavedistill.evals.tasks`) made from the same
  held-out documents into ``suite/tasks``, scored by lm-eval (:mod:`wavedistill.evals.harness`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch

from ..data import eval_windows
from ..errors import WavedistillError
from ..io import context_length, write_text
from . import length as length_probe
from . import recall as recall_probe
from .harness import (check_limit, evaluate, headline, load_task_data, require_lm_eval, table_markdown, task_manager,
                      write_results)
from .report import SUITE, load_suite, plot_suite, suite_markdown
from .runs import load_run_models
from .scoring import MODELS, as_model
from .tasks import TASKS, make_tasks


@dataclass
class SuiteSettings:
    induction_lengths: tuple[int, ...] = recall_probe.INDUCTION_LENGTHS
    passage_lengths: tuple[int, ...] = recall_probe.PASSAGE_LENGTHS
    sequences: int = 100  # random sequences per induction length
    passages: int = 128  # held-out passages per repeated-passage length
    fillers: tuple[int, ...] = recall_probe.FILLER_LENGTHS  # passkey: held-out tokens between key and question
    trials: int = 100  # passkey trials per form and filler length
    lengths: tuple[int, ...] | None = None  # window lengths of the length part; None = length.default_lengths
    max_windows: int = 0  # per length; 0 = every held-out window
    decode_tokens: int = 32
    batch_size: int = 8
    lm_eval_limit: float | None = None
    lm_eval_batch_size: int = 16
    seed: int = 0


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise WavedistillError(f"unknown suite part(s) {unknown or [text]}; known: {', '.join(PARTS)}")
    return list(dict.fromkeys(parts))


def suite_dir(student: str, output_dir: str | None) -> str:
    return os.path.join(output_dir or student, "suite")


def check_suite_dir(directory: str, identity: dict) -> None:
    """Refuse a suite folder that holds another student's (or another setting's) results."""
    path = os.path.join(directory, SUITE)
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before.get("identity") != identity:
            raise WavedistillError(f"{directory!r} holds the suite of another student or setting "
                                   f"({before.get('identity', {}).get('student')}); pass another --output-dir")
    elif os.path.isdir(directory) and os.listdir(directory):
        raise WavedistillError(f"{directory!r} holds files that are not a suite; pass another --output-dir")


def run_suite(student: str, parts: list[str], held, settings: SuiteSettings, *, output_dir: str | None = None,
              base: str | None = None, teacher: str | None = None, device: str = "cpu", dtype=None,
              mixer_attrs: dict | None = None) -> str:
    """Run ``parts`` for the student at ``student`` on ``held`` (:class:`.runs.HeldOut`); returns the folder."""

    small = [k for k in ("sequences", "passages", "trials", "decode_tokens", "batch_size") if getattr(settings, k) < 1]
    if small:
        raise WavedistillError(f"--{small[0].replace('_', '-')} must be at least 1, got {getattr(settings, small[0])}")
    if mixer_attrs and output_dir is None:
        raise WavedistillError("--mixer-attrs changes the student: pass --output-dir for its results")
    directory = suite_dir(student, output_dir)
    data = os.path.abspath(held.data) if os.path.exists(held.data) else held.data
    identity = {"student": os.path.abspath(student), "mixer_attrs": mixer_attrs or None, "data": data,
                "split": held.split, "n_samples": held.n_samples, "val_frac": held.val_frac,
                "test_frac": held.test_frac}
    check_suite_dir(directory, identity)
    if "lm-eval" in parts:
        require_lm_eval()
    models = load_run_models(student, base=base, teacher=teacher, dtype=dtype or torch.float32, device=device,
                             mixer_attrs=mixer_attrs)
    context = context_length(models.teacher.config)
    stream = held.stream(models.tokenizer)
    # Check the lengths of every part before the first one runs: nothing is written for a request that must fail.
    lengths = list(settings.lengths or length_probe.default_lengths(held.seq_len, context))
    if "recall" in parts:
        recall_probe.fitting(settings.induction_lengths, lambda L: 2 * L + 1, context, "induction")
        recall_probe.fitting(settings.passage_lengths, lambda L: 2 * L, context, "repeated-passage")
    if "length" in parts and len(stream) < max(lengths):
        raise WavedistillError(f"{held.describe()} has {len(stream)} tokens, fewer than one window of {max(lengths)}; "
                               "pass more text (--data) or shorter --lengths")
    inputs = SuiteInputs(student, held, settings, models, stream, context, lengths, directory)
    for part in parts:
        print(f"suite: {part} ({held.describe()})", flush=True)
        result = PARTS[part](inputs)
        result["held_out"] = {"text": held.describe(), "tokens": len(stream), "seq_len": held.seq_len}
        write_part(directory, part, result, identity, settings)
    return directory


@dataclass
class SuiteInputs:
    """What every part scores with: the loaded models, the held-out stream and the teacher's context."""

    student: str
    held: object  # wavedistill.evals.runs.HeldOut
    settings: SuiteSettings
    models: object  # wavedistill.evals.runs.RunModels
    stream: object  # (N,) held-out token ids
    context: int | None
    lengths: list[int]
    directory: str


def run_recall(x: SuiteInputs) -> dict:
    s, names = x.settings, list(MODELS)
    windows = eval_windows(x.stream, x.held.seq_len, s.max_windows)
    return {"induction": recall_probe.induction(x.models, x.models.tokenizer, names, s.induction_lengths, s.sequences,
                                                x.context, s.batch_size, s.seed),
            "copy_positions": recall_probe.copy_positions(x.models, windows, names, s.batch_size),
            "repeated_passages": recall_probe.repeated_passages(x.models, x.stream, names, s.passage_lengths,
                                                                s.passages, x.context, s.batch_size),
            "passkey": recall_probe.passkey(x.models, x.models.tokenizer, x.stream, names, s.fillers, s.trials,
                                            context=x.context, batch_size=s.batch_size, seed=s.seed)}


def run_length(x: SuiteInputs) -> dict:
    s = x.settings
    return {"profile": length_probe.position_profile(x.models, x.stream, list(MODELS), x.lengths, x.context,
                                                     s.max_windows, max(1, s.batch_size // 2)),
            "decode": length_probe.decode_speed(x.models, x.stream, ["teacher", "student"], x.lengths,
                                                s.decode_tokens)}


def run_lm_eval_part(x: SuiteInputs) -> dict:
    """Tasks made from the held-out documents, scored by lm-eval for teacher, no mixing and student."""
    limit = check_limit(x.settings.lm_eval_limit)
    tasks_dir = os.path.join(x.directory, "tasks")
    manifest = make_tasks(x.held, x.models.tokenizer, tasks_dir, model=x.student, max_context=x.context,
                          seed=x.settings.seed)
    manager = task_manager(tasks_dir, list(TASKS))
    load_task_data(list(TASKS), manager)
    results = {}
    for name in MODELS:
        print(f"lm-eval: {name} on {', '.join(TASKS)}", flush=True)
        with as_model(name, x.models.student, x.models.teacher) as model:
            results[name] = evaluate(model, x.models.tokenizer, list(TASKS), manager, num_fewshot=None, limit=limit,
                                     batch_size=x.settings.lm_eval_batch_size, max_length=None)
        write_results(os.path.join(x.directory, "lm_eval"), name, results[name])
    table = table_markdown(results, {n: r.get("samples", {}) for n, r in results.items()})
    return {"tasks": manifest["tasks"], "choices": manifest["choices"], "limit": limit, "table": table,
            "headline": {n: headline(r) for n, r in results.items()}}


PARTS = {"recall": run_recall, "length": run_length, "lm-eval": run_lm_eval_part}


def write_part(directory: str, part: str, result: dict, identity: dict, settings: SuiteSettings) -> None:
    os.makedirs(directory, exist_ok=True)
    write_text(os.path.join(directory, f"{part.replace('-', '_')}.json"), json.dumps(result, indent=2))
    path = os.path.join(directory, SUITE)
    suite = {"identity": identity, "parts": {}}
    if os.path.isfile(path):
        with open(path) as f:
            suite = json.load(f)
    suite["parts"][part] = asdict(settings)
    write_text(path, json.dumps(suite, indent=2))
    loaded = load_suite(directory)
    write_text(os.path.join(directory, "suite.md"), suite_markdown(loaded))
    plot_suite(loaded, directory)
