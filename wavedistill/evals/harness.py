"""``wavedistill lm-eval``: lm-evaluation-harness on a student, its teacher and the no-mixing baseline.

Scoring is lm-eval's own: each model is wrapped in lm-eval's ``HFLM`` (the class behind ``--model hf``)
and run through ``simple_evaluate`` with the same tasks, few-shot count and example limit, so every model
answers the same examples. A converted student and its teacher share one copy of the base: the teacher is
that model inside :func:`wavedistill.surgery.as_teacher`, which computes the base bit for bit, and the
no-mixing baseline is the teacher with every attention output zeroed. Output, per model: lm-eval's JSON
(``<model>.json``) and its per-example records (``<model>_samples.jsonl``); one Markdown table
(``table.md``) with each metric ± lm-eval's standard error, the student's retention (student / teacher)
and the paired difference student - teacher with its standard error over the shared examples.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import torch

from ..data import DataSplit
from ..errors import WavedistillError
from ..io import load_teacher, write_text
from .runs import is_student, load_run_models, read_run_config
from .scoring import as_model
from .tasks import read_manifest, tokenizer_fingerprint

INSTALL = 'lm-eval is not installed; install it with: pip install -e ".[eval]"  (or pip install "lm-eval>=0.4,<0.5")'
MODELS = ("teacher", "no_mixing", "student", "model")  # "model": a plain Hugging Face model


def require_lm_eval():
    try:
        import lm_eval  # lazy: lm-eval is an optional dependency
    except ImportError:
        raise WavedistillError(INSTALL) from None
    return lm_eval


def check_limit(limit: float | None) -> float | int | None:
    """lm-eval's ``limit``: a count of examples (>= 1) or a fraction in (0, 1); 0 would mean "all" to lm-eval."""
    if limit is None:
        return None
    if limit <= 0:
        raise WavedistillError(f"--limit must be a number of examples >= 1 or a fraction in (0, 1), got {limit:g}; "
                               "leave it out to score every example")
    return int(limit) if limit >= 1 else limit


def task_manager(include_path: str | None, names: list[str]):
    """lm-eval's TaskManager: over ``include_path`` alone when it holds every task named (indexing lm-eval's
    ~15,000 built-in task files takes ~10 s), else over both."""
    from lm_eval.tasks import TaskManager  # lazy: lm-eval is an optional dependency

    if include_path is not None:
        if not os.path.isdir(include_path):
            raise WavedistillError(f"--include-path {include_path!r} is not a folder; pass the folder of make-tasks")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    return TaskManager(include_path=include_path)


def local_tasks(manager, include_path: str | None) -> list[str]:
    if include_path is None:
        return []
    root = os.path.abspath(include_path)
    return sorted(name for name, entry in manager.task_index.items()
                  if entry.yaml_path is not None and os.path.abspath(entry.yaml_path).startswith(root + os.sep))


def check_tasks(names: list[str], manager, include_path: str | None) -> None:
    if not names:
        raise WavedistillError("--tasks is empty; name lm-eval tasks, e.g. --tasks story_ending,final_word")
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        local = local_tasks(manager, include_path)
        found = (f"local tasks in {include_path}: {', '.join(local) or 'none'}" if include_path
                 else "no --include-path given (make-tasks writes local tasks)")
        raise WavedistillError(f"unknown lm-eval task(s) {', '.join(map(repr, unknown))}; {found}; hub tasks go by "
                               "lm-eval's names (piqa, arc_easy, hellaswag, lambada_openai, ...: `lm-eval ls tasks`)")


def check_task_folder(include_path: str | None, tokenizer, model: str, run_config: dict | None) -> None:
    """Refuse tasks made by make-tasks for another tokenizer, or from text the student was trained on."""
    manifest = read_manifest(include_path) if include_path else None
    if manifest is None:
        return
    if manifest["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise WavedistillError(f"the tasks in {include_path} were made for the tokenizer of {manifest['model']}, and "
                               f"{model} has another; make them again with make-tasks --model {model}")
    if run_config and os.path.abspath(run_config.get("data", "")) == manifest["data"]:
        same = all(run_config.get(k, d) == manifest[k] for k, d in
                   (("val_frac", DataSplit.val_frac), ("test_frac", DataSplit.test_frac), ("n_samples", 0)))
        if not same or manifest["split"] == "all":
            raise WavedistillError(f"the tasks in {include_path} come from {manifest['data']} split otherwise than "
                                   f"{model} was trained ({manifest['split']} split, val_frac {manifest['val_frac']}, "
                                   f"test_frac {manifest['test_frac']}): they may hold its training text; make "
                                   f"them again with make-tasks --model {model}")


def load_task_data(names: list[str], manager) -> None:
    """Build the tasks (and read their data) once before any model loads: a task whose data cannot be read
    (a hub task offline) fails here, in one line."""
    try:
        manager.load(names)
    except Exception as e:  # datasets: connection errors, missing files, offline mode; lm-eval: bad configs
        raise WavedistillError(f"could not load the data of task(s) {', '.join(names)}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''}; hub tasks need the Hugging Face "
                               "hub (or its datasets cached), local ones a make-tasks folder (--include-path)") from None


def evaluate(model, tokenizer, names: list[str], manager, *, num_fewshot: int | None, limit, batch_size: int,
             max_length: int | None) -> dict:
    """lm-eval's ``simple_evaluate`` over ``HFLM(model)``: its results dict, per-example samples included, and
    under ``wavedistill`` the wall time of the evaluation (model loading excluded), batch size and device."""
    from lm_eval import simple_evaluate  # lazy: lm-eval is an optional dependency
    from lm_eval.models.huggingface import HFLM  # lazy: lm-eval is an optional dependency

    # lm-eval warns at every call that an instance (not a name) was passed: that is the intended use here.
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        start = time.perf_counter()
        results = simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                  log_samples=True)
        results["wavedistill"] = {"evaluate_wall_s": round(time.perf_counter() - start, 2), "batch_size": batch_size,
                                  "device": str(next(model.parameters()).device),
                                  "threads": torch.get_num_threads()}
        return results
    finally:
        quiet.setLevel(level)


def write_results(directory: str, name: str, results: dict) -> None:
    """``<name>.json`` (lm-eval's results without the samples) and ``<name>_samples.jsonl``."""
    from lm_eval.utils import handle_non_serializable  # lazy: lm-eval is an optional dependency

    os.makedirs(directory, exist_ok=True)
    body = {k: v for k, v in results.items() if k != "samples"}
    write_text(os.path.join(directory, f"{name}.json"), json.dumps(body, indent=2, default=handle_non_serializable))
    lines = [json.dumps({"task": task, **{k: s[k] for k in ("doc_id", "doc_hash", "target", *_sample_metrics(s))}},
                        default=handle_non_serializable)
             for task, rows in results.get("samples", {}).items() for s in rows]
    write_text(os.path.join(directory, f"{name}_samples.jsonl"), "".join(line + "\n" for line in lines))


def _sample_metrics(sample: dict) -> list[str]:
    return [m for m in sample.get("metrics", []) if m in sample]


def paired_difference(a: list[dict], b: list[dict], metric: str) -> tuple[float, float, int] | None:
    """Mean of ``b - a`` over the examples both scored, its standard error and their count (mean metrics only)."""
    xs = {s["doc_id"]: s[metric] for s in a if isinstance(s.get(metric), (int, float))}
    diffs = [s[metric] - xs[s["doc_id"]] for s in b if s["doc_id"] in xs and isinstance(s.get(metric), (int, float))]
    n = len(diffs)
    if n < 2:
        return None
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, sd / math.sqrt(n), n


def headline(results: dict) -> dict:
    """{task: {metric: value, metric_stderr: ..., "n": examples}} from lm-eval's results dict."""
    out = {}
    for task, row in results["results"].items():
        cells = {k.split(",")[0]: v for k, v in row.items() if "," in k and isinstance(v, (int, float))}
        cells["n"] = results.get("n-samples", {}).get(task, {}).get("effective")
        out[task] = cells
    return out


def _mean_metrics(results: dict, task: str) -> set[str]:
    """The metrics of ``task`` averaged over examples (those a paired difference applies to)."""
    config = results.get("configs", {}).get(task, {})
    return {m["metric"] for m in config.get("metric_list", []) if m.get("aggregation") == "mean"}


def _cell(cells: dict, metric: str) -> str:
    value, se = cells.get(metric), cells.get(f"{metric}_stderr")
    if value is None:
        return "—"
    return f"{value:.4f}" + (f" ± {se:.4f}" if isinstance(se, float) else "")


def table_markdown(results: dict[str, dict], samples: dict[str, dict]) -> str:
    """One row per task and metric: each model's value ± lm-eval's stderr; with a teacher and a student also the
    retention (student / teacher) and the paired difference student − teacher ± its stderr."""
    names = [n for n in MODELS if n in results]
    heads = {n: headline(results[n]) for n in names}
    paired = "teacher" in results and "student" in results
    out = ["| task | metric | n | " + " | ".join(n.replace("_", " ") for n in names) + " |"
           + (" retention (student / teacher) | student − teacher (paired) |" if paired else ""),
           "|---|---|---:|" + "---:|" * (len(names) + 2 * paired)]
    for task, first in heads[names[0]].items():
        higher = results[names[0]].get("higher_is_better", {}).get(task, {})
        for metric in [k for k in first if not k.endswith("_stderr") and k != "n"]:
            arrow = {True: " ↑", False: " ↓"}.get(higher.get(metric), "")
            row = [task, metric + arrow, str(first.get("n", "?")), *(_cell(heads[n][task], metric) for n in names)]
            if paired:
                t, s = heads["teacher"][task].get(metric), heads["student"][task].get(metric)
                row.append(f"{s / t:.3f}" if t else "—")
                d = (paired_difference(samples["teacher"].get(task, []), samples["student"].get(task, []), metric)
                     if metric in _mean_metrics(results["teacher"], task) else None)
                row.append(f"{d[0]:+.4f} ± {d[1]:.4f}" if d else "—")
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def run_lm_eval(target: str, tasks: list[str], *, include_path: str | None = None, num_fewshot: int | None = None,
                limit: float | None = None, batch_size: int = 16, device: str = "cpu", dtype=None,
                with_teacher: bool = False, teacher: str | None = None, with_no_mixing: bool = False,
                output_dir: str | None = None, base: str | None = None, mixer_attrs: dict | None = None,
                overwrite: bool = False) -> dict:
    """Evaluate ``target`` (a student run / adapter folder, or a plain model folder or hub id) and, on request,
    its teacher and the no-mixing baseline, on the same tasks and examples; write the results; the table.

    Everything that can be checked (lm-eval installed, limit, task names and data, tokenizer of a make-tasks
    folder, output folder) is checked before a model runs, and nothing is written before the first result.
    """

    require_lm_eval()
    limit = check_limit(limit)
    if batch_size < 1:
        raise WavedistillError(f"--batch-size must be at least 1, got {batch_size}")
    student_run = is_student(target)
    if not student_run and (with_no_mixing or (with_teacher and not teacher)):
        raise WavedistillError(f"{target!r} is a plain model, not a student run: it has no teacher of its own "
                               "(pass --teacher MODEL to compare with one; --with-no-mixing needs a run)")
    if output_dir is None and (not student_run or mixer_attrs):
        raise WavedistillError("pass --output-dir: results go inside a run folder only for the run's own student"
                               + (" (--mixer-attrs changes it)" if student_run else ""))
    out = output_dir or os.path.join(target, "lm_eval")
    settings = {"target": os.path.abspath(target) if os.path.exists(target) else target, "tasks": tasks,
                "include_path": os.path.abspath(include_path) if include_path else None, "num_fewshot": num_fewshot,
                "limit": limit, "mixer_attrs": mixer_attrs}
    check_output(out, settings, overwrite)
    manager = task_manager(include_path, tasks)
    check_tasks(tasks, manager, include_path)
    dtype = dtype or torch.float32
    if student_run:
        models = load_run_models(target, base=base, teacher=teacher, dtype=dtype, device=device,
                                 mixer_attrs=mixer_attrs)
        student, teacher_model, tokenizer = models.student, models.teacher, models.tokenizer
    else:
        student, tokenizer = load_teacher(target, dtype=dtype, device=device)
        teacher_model = load_teacher(teacher, dtype=dtype, device=device)[0] if teacher else None
    check_task_folder(include_path, tokenizer, target, read_run_config(target) if student_run else None)
    load_task_data(tasks, manager)
    names = ["student"] if student_run or teacher_model is not None else ["model"]
    names = (["teacher"] if with_teacher or teacher else []) + (["no_mixing"] if with_no_mixing else []) + names
    results = {}
    for name in names:
        print(f"lm-eval: {name} on {', '.join(tasks)}", flush=True)
        with as_model("student" if name == "model" else name, student, teacher_model) as model:
            results[name] = evaluate(model, tokenizer, tasks, manager, num_fewshot=num_fewshot, limit=limit,
                                     batch_size=batch_size, max_length=None)
        print(f"lm-eval: {name} took {results[name]['wavedistill']['evaluate_wall_s']} s", flush=True)
    os.makedirs(out, exist_ok=True)
    for name, r in results.items():
        write_results(out, name, r)
    table = table_markdown(results, {n: r.get("samples", {}) for n, r in results.items()})
    about = (f"lm-eval {require_lm_eval().__version__} on {target}: tasks {', '.join(tasks)}"
             f"{f' from {include_path}' if include_path else ''}, {num_fewshot or 0}-shot"
             f"{f', limit {limit}' if limit else ''}{f', mixer attributes {mixer_attrs}' if mixer_attrs else ''}; "
             "± is lm-eval's standard error")
    write_text(os.path.join(out, "table.md"), f"{about}\n\n{table}")
    write_text(os.path.join(out, "settings.json"), json.dumps(settings, indent=2))
    return {"output_dir": out, "table": table, "headline": {n: headline(r) for n, r in results.items()}}


def check_output(out: str, settings: dict, overwrite: bool) -> None:
    """Refuse a folder holding another evaluation's results (other model, tasks or settings) unless ``overwrite``;
    a rerun of the same evaluation replaces its own files."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise WavedistillError(f"--output-dir {out!r} is a file; pass a folder")
    path = os.path.join(out, "settings.json")
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before == json.loads(json.dumps(settings)) or overwrite:
            return
        raise WavedistillError(f"{out!r} holds lm-eval results of another evaluation ({before.get('target')}, tasks "
                               f"{', '.join(before.get('tasks') or [])}); pass another --output-dir, or --overwrite")
    if os.listdir(out) and not overwrite:
        raise WavedistillError(f"{out!r} holds other files; pass an empty or new --output-dir, or --overwrite")
