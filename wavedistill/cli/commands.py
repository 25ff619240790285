"""What each ``wavedistill`` command does with its parsed arguments: one ``cmd_<name>(args)`` per command."""

from __future__ import annotations

import json
import os
import sys

import torch

from ..bench.decode import run_decode_bench
from ..bench.loss import run_loss_bench
from ..bench.train import run_bench
from ..core.devices import DTYPES, resolve_device
from ..core.run_folder import write_manifest
from ..data import eval_windows
from ..errors import WavedistillError
from ..evals.compare import run_compare
from ..evals.harness import run_lm_eval
from ..evals.layers import run_layer_report
from ..evals.report import SUITE, load_suite, suite_comparison, suite_table
from ..evals.runs import (eval_destination, eval_identity, held_out, is_student, load_run_models, report_table,
                          teacher_name)
from ..evals.suite import PARTS, SuiteSettings, parse_parts, run_suite
from ..evals.tasks import make_tasks
from ..evaluate import evaluate_student, print_metrics, window_prompts, write_evaluation
from ..io import load_student, load_teacher, load_tokenizer
from ..mixers import get_mixer_class, list_mixers
from ..training.distill import run
from ..training.teacher_cache import write_cache
from .args import distill_changes, distill_config
from .demo import run_demo


def cmd_distill(args) -> None:
    cfg = distill_config(args)
    if args.command == "kd" and cfg.student is None:
        raise WavedistillError("wavedistill kd distils into a separate student: pass --student standard|compressed|"
                               "tiny|FOLDER or --student-layers / --student-hidden-size / ... (or use distill)")
    if run(cfg) is not None:  # the main process
        out = cfg.output_dir
        extra = ", student/ (a Hugging Face folder: from_pretrained)" if cfg.student else ""
        print(f"run written to {out}: adapter/ (the selected student), metrics.json (test split), samples.md, "
              f"train_log.jsonl{extra}. Next: wavedistill generate --student {out} --prompt ... | "
              f"wavedistill eval --student {out} --suite all")


def cmd_cache_teacher(args) -> None:
    meta = write_cache(args.teacher, args.data, args.output_dir, top_k=args.top_k, seq_len=args.seq_len,
                       batch_size=args.batch_size, n_samples=args.n_samples, val_frac=args.val_frac,
                       test_frac=args.test_frac, dtype=args.dtype, device=resolve_device(args.device),
                       overwrite=args.overwrite)
    print(f"teacher cache {args.output_dir}: {meta['n_windows']} windows x {meta['seq_len']} = {meta['n_tokens']:,} "
          f"tokens, top-{meta['top_k']} | {meta['bytes_per_token']} bytes per token "
          f"({meta['bytes'] / 2**20:.1f} MiB) | teacher {meta['teacher_tokens_per_s']:,} tokens/s | {meta['wall_s']} s")


def cmd_layers(args) -> None:
    changes = distill_changes(args)
    given = sorted(set(changes) - {"output_dir"})
    if args.from_run and given:
        raise WavedistillError(f"--from-run scores that run's student with its own settings; drop "
                               f"{', '.join(given)} (or train a transfer run here without --from-run)")
    changes.setdefault("stages", [{"kind": "transfer", "steps": args.transfer_steps}])
    run_layer_report(changes, args.output_dir or "runs/layers", select_keep=args.select_keep, from_run=args.from_run)


def cmd_compare(args) -> None:
    changes = distill_changes(args)
    changes.pop("output_dir", None)
    run_compare(changes, [m for m in args.mixers.split(",") if m.strip()], args.output_dir or "runs/compare")


def cmd_eval(args) -> None:
    device = resolve_device(args.device)
    names = ["agreement", *PARTS] if args.suite == "all" else [p.strip() for p in args.suite.split(",") if p.strip()]
    parts = parse_parts(",".join(p for p in names if p != "agreement")) if set(names) - {"agreement"} else []
    if "agreement" not in names and not parts:
        raise WavedistillError(f"--suite names no part; known: agreement, {', '.join(PARTS)}, all")
    # where the results go is checked before anything loads (cheap checks first)
    destination = eval_destination(args.student, args.output_dir, args.mixer_attrs) if "agreement" in names else None
    held = held_out(args.student, args.data, args.split, val_frac=args.val_frac, test_frac=args.test_frac,
                    seq_len=args.seq_len, n_samples=args.n_samples)
    if destination:
        eval_agreement(args, held, device, *destination)
    if parts:
        settings = SuiteSettings(batch_size=args.batch_size, decode_tokens=args.decode_tokens,
                                 lm_eval_limit=args.lm_eval_limit, sequences=args.sequences, passages=args.passages,
                                 trials=args.trials, max_windows=args.max_windows,
                                 **{k: tuple(getattr(args, k)) for k in
                                    ("induction_lengths", "passage_lengths", "fillers", "lengths") if getattr(args, k)})
        folder = run_suite(args.student, parts, held, settings, output_dir=args.output_dir, base=args.base,
                           teacher=args.teacher, device=device, dtype=DTYPES[args.dtype], mixer_attrs=args.mixer_attrs)
        print(f"suite ({', '.join(parts)}) written to {folder}: suite.md, *.json, plots")


def eval_agreement(args, held, device: str, out: str, prefix: str) -> None:
    """Top-k agreement, KL and perplexities over every held-out window, plus side-by-side generations."""
    models = load_run_models(args.student, base=args.base, teacher=args.teacher, dtype=DTYPES[args.dtype],
                             device=device, mixer_attrs=args.mixer_attrs)
    stream = held.stream(models.tokenizer)
    windows = eval_windows(stream, held.seq_len, args.max_windows)
    if len(windows) == 0:
        raise WavedistillError(f"the {held.split} text has {len(stream)} tokens, fewer than one window of "
                               f"{held.seq_len}; pass more text or a smaller --seq-len")
    prompts = window_prompts(stream, held.seq_len, min(4, len(windows)))
    metrics, rows = evaluate_student(models.teacher, models.student, models.tokenizer, windows, prompts,
                                     device=device, batch_size=args.batch_size, vocab=models.vocab)
    metrics.update({"split": held.split, "data": held.data, "seq_len": held.seq_len, "student_run": args.student,
                    "mixer": models.adapter_config["mixer"] or "attention", "mixer_attrs": args.mixer_attrs or None})
    if not prefix:
        write_manifest(out, "eval", eval_identity(args.student, args.mixer_attrs))
    write_evaluation(out, metrics, rows, prefix=prefix)
    print_metrics(metrics, title=f"{held.split} split of {held.data}: {metrics['positions']} positions")
    print(f"written to {os.path.join(out, prefix + 'metrics.json')} and {os.path.join(out, prefix + 'samples.md')}")


def cmd_lm_eval(args) -> None:
    result = run_lm_eval(args.model, args.tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                         limit=args.limit, batch_size=args.batch_size, device=resolve_device(args.device),
                         dtype=DTYPES[args.dtype], with_teacher=args.with_teacher, teacher=args.teacher,
                         with_no_mixing=args.with_no_mixing, output_dir=args.output_dir, base=args.base,
                         mixer_attrs=args.mixer_attrs, overwrite=args.overwrite)
    print(result["table"])
    print(f"lm-eval results written to {result['output_dir']}: table.md, <model>.json, <model>_samples.jsonl")


def cmd_make_tasks(args) -> None:
    run = args.model if is_student(args.model) else None
    held = held_out(run, args.data, args.split, val_frac=args.val_frac, test_frac=args.test_frac,
                    n_samples=args.n_samples)
    tokenizer, context = load_tokenizer(teacher_name(run) if run else args.model)
    manifest = make_tasks(held, tokenizer, args.output_dir, model=args.model, max_context=context,
                          n_choices=args.choices, seed=args.seed, max_examples=args.max_examples)
    counts = ", ".join(f"{k} {v} examples" for k, v in manifest["tasks"].items())
    print(f"tasks from {held.describe()}, {manifest['documents']} documents: {counts}; written to {args.output_dir} "
          f"(lm-eval: --include-path {args.output_dir} --tasks {','.join(manifest['tasks'])})")


def cmd_generate(args) -> None:
    if args.max_new_tokens < 1:
        raise WavedistillError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise WavedistillError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    device = resolve_device(args.device)
    if is_student(args.student) or not os.path.isfile(os.path.join(args.student, "config.json")):
        model, tok = load_student(args.student, base=args.base, dtype=DTYPES[args.dtype], device=device)
    else:  # a plain Hugging Face folder, such as a separate student's OUT/student
        model, tok = load_teacher(args.student, dtype=DTYPES[args.dtype], device=device)
    torch.manual_seed(args.seed)
    ids = tok(args.prompt, return_tensors="pt").input_ids.to(device)
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                         temperature=args.temperature if args.temperature > 0 else None,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    print(tok.decode(out[0], skip_special_tokens=True))


def cmd_mixers(args) -> None:
    for name in list_mixers():
        cls = get_mixer_class(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        decoding = cls.state_form or "no recurrent form: decoding re-runs the mixer over the input history"
        print(f"{name:16s} {doc}\n{'':16s} decoding state: {decoding}")


def cmd_report(args) -> None:
    if args.suite:
        folders = [os.path.join(d, "suite") for d in args.runs]
        missing = [d for d, f in zip(args.runs, folders) if not os.path.isfile(os.path.join(f, SUITE))]
        if missing:
            raise WavedistillError(f"{missing[0]!r} has no suite/{SUITE}; run wavedistill eval --suite on it first")
        table = suite_comparison([(os.path.basename(os.path.normpath(d)), load_suite(f))
                                  for d, f in zip(args.runs, folders)])
    else:
        rows = []
        runs = finished_runs(args.runs)
        for run_dir in runs:
            with open(os.path.join(run_dir, "metrics.json")) as f:
                rows.append((run_dir, json.load(f)))
        table = report_table(rows)
        suite = suite_table(runs)
        table += f"\n{suite}" if suite else ""
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)
    print(table)


def finished_runs(paths: list[str]) -> list[str]:
    """The finished runs among ``paths`` (a folder of runs, like runs/demo, stands for the runs in it); the others
    are skipped with a note, so one folder that is not a run does not stop the table."""
    runs = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "metrics.json")):
            runs.append(path)
            continue
        inside = sorted(os.path.join(path, n) for n in (os.listdir(path) if os.path.isdir(path) else [])
                        if os.path.isfile(os.path.join(path, n, "metrics.json")))
        runs += inside
        if not inside:
            print(f"report: skipping {path} (no metrics.json: not a finished run)", file=sys.stderr)
    if not runs:
        raise WavedistillError(f"no finished run (a folder with metrics.json) among {', '.join(paths)}; finish a run "
                               "or pass its folder")
    return runs


def cmd_bench(args) -> None:
    if args.loss:
        run_loss_bench(args)
        return
    if args.decode:
        run_decode_bench(args)
        return

    run_bench(args)


def cmd_demo(args) -> None:
    run_demo(args)
