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

from ..errors import WavedistillError
from ..io import write_text
from . import length as length_probe
from . import recall as recall_probe
from .report import SUITE, load_suite, plot_suite, suite_markdown
from .scoring import MODELS

PARTS = ("recall", "length", "lm-eval")


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
    """Run ``parts`` for the student at ``student`` on ``held`` (:class:`wavedistill.runs.HeldOut`); the folder."""
    import torch

    from ..io import context_length
    from ..runs import load_run_models

    small = [k for k in ("sequences", "passages", "trials", "decode_tokens", "batch_size") if getattr(settings, k) < 1]
    if small:
        raise WavedistillError(f"--{small[0].replace('_', '-')} must be at least 1, got {getattr(settings, small[0])}")
    if mixer_attrs and output_dir is None:
        raise WavedistillError("--mixer-attrs changes the student: pass --output-dir for its results")
    directory = suite_dir(student, output_dir)
    identity = {"student": os.path.abspath(student), "mixer_attrs": mixer_attrs or None, "data": held.data,
                "split": held.split, "n_samples": held.n_samples, "val_frac": held.val_frac,
                "test_frac": held.test_frac}
    check_suite_dir(directory, identity)
    if "lm-eval" in parts:
        from .harness import require_lm_eval

        require_lm_eval()
    models = load_run_models(student, base=base, teacher=teacher, dtype=dtype or torch.float32, device=device,
                             mixer_attrs=mixer_attrs)
    context = context_length(models.teacher.config)
    stream = held.stream(models.tokenizer)
    results = {}
    # Check the lengths of every part before the first one runs: nothing is written for a request that must fail.
    lengths = list(settings.lengths or length_probe.default_lengths(held.seq_len, context))
    if "recall" in parts:
        recall_probe.fitting(settings.induction_lengths, lambda L: 2 * L + 1, context, "induction")
        recall_probe.fitting(settings.passage_lengths, lambda L: 2 * L, context, "repeated-passage")
    if "length" in parts and len(stream) < max(lengths):
        raise WavedistillError(f"{held.describe()} has {len(stream)} tokens, fewer than one window of {max(lengths)}; "
                               "pass more text (--data) or shorter --lengths")
    names = list(MODELS)
    for part in parts:
        print(f"suite: {part} ({held.describe()})", flush=True)
        if part == "recall":
            from ..data import eval_windows

            windows = eval_windows(stream, held.seq_len, settings.max_windows)
            results[part] = {
                "induction": recall_probe.induction(models, models.tokenizer, names, settings.induction_lengths,
                                                    settings.sequences, context, settings.batch_size, settings.seed),
                "copy_positions": recall_probe.copy_positions(models, windows, names, settings.batch_size),
                "repeated_passages": recall_probe.repeated_passages(models, stream, names, settings.passage_lengths,
                                                                    settings.passages, context, settings.batch_size),
                "passkey": recall_probe.passkey(models, models.tokenizer, stream, names, settings.fillers,
                                                settings.trials, context=context, batch_size=settings.batch_size,
                                                seed=settings.seed)}
        elif part == "length":
            results[part] = {
                "profile": length_probe.position_profile(models, stream, names, lengths, context,
                                                         settings.max_windows, max(1, settings.batch_size // 2)),
                "decode": length_probe.decode_speed(models, stream, ["teacher", "student"], lengths,
                                                    settings.decode_tokens)}
        else:
            results[part] = run_lm_eval_part(student, held, models, directory, settings, context)
        results[part]["held_out"] = {"text": held.describe(), "tokens": len(stream), "seq_len": held.seq_len}
        write_part(directory, part, results[part], identity, settings)
    return directory


def run_lm_eval_part(student: str, held, models, directory: str, settings: SuiteSettings, context) -> dict:
    """Tasks made from the held-out documents, scored by lm-eval for teacher, no mixing and student."""
    from .harness import (check_limit, evaluate, headline, load_task_data, table_markdown, task_manager,
                          write_results)
    from .scoring import as_model
    from .tasks import TASKS, make_tasks

    limit = check_limit(settings.lm_eval_limit)
    tasks_dir = os.path.join(directory, "tasks")
    manifest = make_tasks(held, models.tokenizer, tasks_dir, model=student, max_context=context, seed=settings.seed)
    manager = task_manager(tasks_dir, list(TASKS))
    load_task_data(list(TASKS), manager)
    results = {}
    for name in MODELS:
        print(f"lm-eval: {name} on {', '.join(TASKS)}", flush=True)
        with as_model(name, models.student, models.teacher) as model:
            results[name] = evaluate(model, models.tokenizer, list(TASKS), manager, num_fewshot=None, limit=limit,
                                     batch_size=settings.lm_eval_batch_size, max_length=None)
        write_results(os.path.join(directory, "lm_eval"), name, results[name])
    table = table_markdown(results, {n: r.get("samples", {}) for n, r in results.items()})
    return {"tasks": manifest["tasks"], "choices": manifest["choices"], "limit": limit, "table": table,
            "headline": {n: headline(r) for n, r in results.items()}}


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


