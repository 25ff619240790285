"""``wavedistill`` command line: distill, kd, cache-teacher, layers, compare, lab, analyze, eval, lm-eval, make-tasks,
generate, report, bench, demo, mixers."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from transformers.utils import logging as hf_logging

from .argtypes import device_map_arg, int_list, json_dict, layer_list, name_list, stages_list
from .bench import run_bench
from .compare import run_compare
from .config import DistillConfig, load_yaml, make_config, saved_config
from .core.devices import DTYPES, resolve_device
from .data import DataSplit, eval_windows
from .demo import run_demo
from .distill import run
from .errors import WavedistillError
from .evals.harness import run_lm_eval
from .evals.report import SUITE, load_suite, suite_comparison, suite_table
from .evals.suite import PARTS, SuiteSettings, parse_parts, run_suite
from .evals.tasks import make_tasks
from .evaluate import evaluate_student, print_metrics, window_prompts, write_evaluation
from .io import load_student, load_teacher, load_tokenizer
from .lab.cli import add_lab_parsers
from .layer_report import run_layer_report
from .mixers import get_mixer_class, list_mixers
from .recipes import LOSS_FIELDS, KDLoss
from .run_folder import write_manifest
from .runs import eval_destination, eval_identity, held_out, is_student, load_run_models, teacher_name
from .teacher_cache import write_cache

DISTILL_FLAGS = {  # flag (and aliases) -> config field; defaults come from DistillConfig
    ("--teacher",): "teacher", ("--wave-type", "--wave_type", "--mixer"): "wave_type", ("--layers",): "layers",
    ("--data",): "data", ("--n-samples", "--n_samples"): "n_samples", ("--epochs", "--n_epochs"): "epochs",
    ("--output-dir", "--output_dir"): "output_dir", ("--seq-len",): "seq_len", ("--batch-size",): "batch_size",
    ("--lr",): "lr", ("--temperature",): "temperature", ("--max-steps",): "max_steps",
    ("--save-every",): "save_every", ("--eval-every",): "eval_every", ("--device",): "device", ("--dtype",): "dtype",
    ("--seed",): "seed", ("--mixer-kwargs",): "mixer_kwargs", ("--test-windows",): "test_windows",
    ("--keep-attention",): "keep_attention", ("--keep-attention-every",): "keep_attention_every",
    ("--stages",): "stages", ("--lora-mlp",): "lora_mlp", ("--lora-alpha",): "lora_alpha", ("--reinit",): "reinit",
    ("--grad-accum",): "grad_accum", ("--teacher-cache",): "teacher_cache", ("--train-windows",): "train_windows",
    ("--teacher-dtype",): "teacher_dtype", ("--teacher-device-map",): "teacher_device_map",
    ("--teacher-max-memory",): "teacher_max_memory", ("--tracker",): "tracker",
    ("--grad-norm-every",): "grad_norm_every", ("--val-windows",): "val_windows",
}


STUDENT_SIZE_FLAGS = {"--student-layers": "layers", "--student-hidden-size": "hidden_size",
                      "--student-heads": "heads", "--student-kv-heads": "kv_heads",
                      "--student-intermediate-size": "intermediate_size"}


LOSS_HELP = {"kl_weight": "weight of the divergence to the teacher (default: 0.9)",
             "ce_weight": "weight of next-token CE on the data (default: 0.1)",
             "label_smoothing": "of the CE term, in [0, 1) (default: 0)",
             "divergence": "forward_kl (default) | reverse_kl | jsd",
             "temperature_schedule": "constant (default) | linear | cosine (to --temperature-end) | dynamic",
             "temperature_end": "end of a linear / cosine schedule (default: 1)",
             "temperature_max": "dynamic: the temperature of a fully confident teacher position (default: 4)",
             "hidden_weight": "weight of the feature loss on mapped layer outputs (default: 0)",
             "hidden_loss": "mse (default) | cosine, through a learned projection where widths differ",
             "attention_weight": "weight of the attention-map loss, or a wave mixer's mixing matrix (default: 0)",
             "attention_loss": "kl (default) | mse, per query row",
             "attention_heads": "head (default): head h <-> teacher head h | group: <-> its GQA group's mean",
             "attention_window": "> 0: match the maps of the first N positions only (default: 0 = all)",
             "loss_chunk": "positions per chunk of the kd loss; 0 = dense (default: ~128 MB per chunk)"}


def layer_map_arg(text: str) -> str | list[int]:
    return layer_list(text) if text[:1].isdigit() else text


def add_distill_args(p: argparse.ArgumentParser) -> None:
    defaults = DistillConfig()
    types = {"layers": layer_list, "keep_attention": layer_list, "reinit": name_list, "mixer_kwargs": json_dict,
             "teacher_device_map": device_map_arg, "teacher_max_memory": json_dict,
             "epochs": float, "lr": float,
             "temperature": float, "stages": stages_list, "lora_alpha": float}
    for flags, name in DISTILL_FLAGS.items():
        default = getattr(defaults, name)
        kind = types.get(name, type(default) if default is not None else str)
        p.add_argument(*flags, dest=name, type=kind, default=None, help=f"(default: {default})")
    # an earlier version's flag: refused in distill_changes with what replaced it
    p.add_argument("--alpha", dest="removed_alpha", type=float, help=argparse.SUPPRESS)
    p.add_argument("--config", "--recipe", dest="config",
                   help="YAML file with config changes (a recipe: `stages:` and settings); command-line flags win")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --output-dir with the settings of its config.yaml (flags may change only "
                        "--max-steps upward, --save-every, --device, --tracker, --grad-norm-every)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="delete what --output-dir holds and start again (otherwise a used folder is refused)")
    p.add_argument("--unfreeze-mlps", action="store_true", default=None, help="also train the MLPs")
    p.add_argument("--lora-merge", action="store_true", default=None,
                   help="merge the --lora-mlp update into the MLP weights of the final adapter")
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute decoder-layer activations in backward instead of storing them")
    p.add_argument("--no-train", dest="train", action="store_false", default=None,
                   help="score the teacher-initialised student without training (a baseline)")
    g = p.add_argument_group("the kd loss, set on every kd / progressive / handoff stage (a recipe stage that sets "
                             "the same field to another value is an error)")
    loss_defaults = KDLoss()
    for key in LOSS_FIELDS:
        default = getattr(loss_defaults, key)
        kind = int if key == "loss_chunk" else float if default is None else type(default)
        g.add_argument(f"--{key.replace('_', '-')}", dest=f"loss_{key}", metavar=key.upper(), type=kind,
                       help=LOSS_HELP[key])
    g = p.add_argument_group("a separate, smaller student (instead of converting the teacher in place)")
    g.add_argument("--student", dest="student_base", metavar="PRESET|FOLDER",
                   help="standard | compressed | tiny (the teacher scaled in width / depth) or a local HF model folder")
    for flag, key in STUDENT_SIZE_FLAGS.items():
        g.add_argument(flag, dest=f"student_{key}", type=int, help="overrides the preset (default: the teacher's)")
    g.add_argument("--student-mixer", dest="student_mixer", help="attention (default) or any registered mixer")
    g.add_argument("--student-init", dest="student_init", help="teacher (weight selection, default) | random")
    g.add_argument("--layer-map", dest="student_layer_map", type=layer_map_arg,
                   help="uniform (default) | first | last | zones | teacher layers such as 0,2,4")


def distill_changes(args: argparse.Namespace) -> dict:
    """Config changes from --config / --recipe and the flags given (flags win)."""
    if args.removed_alpha is not None:
        raise WavedistillError("--alpha was replaced by --kl-weight and --ce-weight (--alpha A = --kl-weight A "
                               "--ce-weight 1-A)")
    changes = load_yaml(args.config) if args.config else {}
    for name in list(DISTILL_FLAGS.values()) + ["resume", "overwrite", "unfreeze_mlps", "lora_merge", "train", "grad_checkpointing"]:
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    student = dict(changes.get("student") or {})
    if args.student_base is not None:
        student["path" if os.path.isdir(args.student_base) else "preset"] = args.student_base
    for key in list(STUDENT_SIZE_FLAGS.values()) + ["mixer", "init", "layer_map"]:
        value = getattr(args, f"student_{key}")
        if value is not None:
            student[key] = value
    if student:
        changes["student"] = student
    loss = dict(changes.get("loss") or {})
    loss.update({key: getattr(args, f"loss_{key}") for key in LOSS_FIELDS if getattr(args, f"loss_{key}") is not None})
    if loss:
        changes["loss"] = loss
    return changes


def distill_config(args: argparse.Namespace):
    """The run's config; with --resume, the run's own config.yaml with the flags given on top (checked by the run)."""
    changes = distill_changes(args)
    if changes.get("resume"):
        out = changes.get("output_dir", DistillConfig.output_dir)
        saved = saved_config(out) if os.path.isfile(os.path.join(out, "config.yaml")) else {}
        student = {**(saved.get("student") or {}), **(changes.get("student") or {})} or None
        # how the run was started (--overwrite) is not a setting to carry over
        changes = {**saved, "overwrite": False, **changes, "student": student}
    return make_config(changes)


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
        from .evaluate import report_table

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
        from .bench_loss import run_loss_bench

        run_loss_bench(args)
        return
    if args.decode:
        from .bench_decode import run_decode_bench

        run_decode_bench(args)
        return

    run_bench(args)


def cmd_demo(args) -> None:
    run_demo(args)


def add_held_out_args(p: argparse.ArgumentParser, splits: list[str]) -> None:
    """Which held-out text a command reads: a split of --data's documents, split as the run split them."""
    p.add_argument("--split", default="test", choices=splits,
                   help="which part of --data: the run's test split (default)" + (" or all of it" if "all" in splits
                                                                                   else ""))
    p.add_argument("--val-frac", type=float, help=f"default: the run's config.yaml, else {DataSplit.val_frac}")
    p.add_argument("--test-frac", type=float, help=f"default: the run's config.yaml, else {DataSplit.test_frac}")
    p.add_argument("--n-samples", type=int, help="documents to read (0 = all; hub: 20000); default: the run's when "
                   "--data is the run's data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavedistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="replace attention with a wave mixer and distill from the teacher")
    add_distill_args(p)
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("kd", help="distill the teacher into a separate, smaller student (distill with --student)")
    add_distill_args(p)
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("cache-teacher", help="write the teacher's top-k next-token targets for the training split, "
                       "for distill --teacher-cache")
    p.add_argument("--teacher", required=True, help="model folder or hub id")
    p.add_argument("--data", required=True, help="local .txt/.jsonl/.parquet file or hub dataset (the run's --data)")
    p.add_argument("--output-dir", required=True, help="a new folder for the cache")
    p.add_argument("--overwrite", action="store_true", help="delete what --output-dir holds and write the cache there")
    p.add_argument("--top-k", type=int, default=32, help="tokens kept per position (default: 32, 198 bytes per token)")
    p.add_argument("--seq-len", type=int, default=256, help="window length: the run's --seq-len (default: 256)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per teacher forward (default: 16)")
    p.add_argument("--n-samples", type=int, default=0, help="documents to read, as the run's --n-samples (default: 0)")
    p.add_argument("--val-frac", type=float, default=DataSplit.val_frac,
                   help=f"the run's val_frac (default: {DataSplit.val_frac})")
    p.add_argument("--test-frac", type=float, default=DataSplit.test_frac,
                   help=f"the run's test_frac (default: {DataSplit.test_frac})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(fn=cmd_cache_teacher)

    p = sub.add_parser("layers", help="per-layer report: transfer loss and held-out KL with only that layer replaced")
    add_distill_args(p)
    p.add_argument("--transfer-steps", type=int, default=500,
                   help="steps of the all-layers transfer run (when no --stages / recipe stages are given)")
    p.add_argument("--select-keep", type=int, metavar="K",
                   help="also choose K layers to keep as attention, greedily by val KL; writes keep_attention.txt")
    p.add_argument("--from-run", metavar="RUN", help="score this finished distill run's student (no transfer run)")
    p.set_defaults(fn=cmd_layers)

    p = sub.add_parser("compare", help="the same recipe for several mixers: one table and a top-5 vs tokens plot")
    add_distill_args(p)
    p.add_argument("--mixers", required=True, help="comma-separated mixer names, e.g. learned_gate,fnet")
    p.set_defaults(fn=cmd_compare)

    add_lab_parsers(sub)

    p = sub.add_parser("eval", help="score a student against its teacher on held-out text: agreement, recall, "
                       "context length, lm-eval")
    p.add_argument("--student", required=True, help="run folder (with adapter/) or adapter folder")
    p.add_argument("--data", help="local .txt/.jsonl/.parquet file or hub dataset (default: the run's --data)")
    add_held_out_args(p, ["test", "val", "all"])
    p.add_argument("--seq-len", type=int, help="default: the run's config.yaml, else 256")
    p.add_argument("--max-windows", type=int, default=0, help="0 = every window")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--base", help="base model (default: the one named in the adapter)")
    p.add_argument("--teacher", help="a separate student's teacher (default: the one named in its adapter)")
    p.add_argument("--output-dir", help="where metrics.json / samples.md go (default: eval_*.json in --student)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--mixer-attrs", type=json_dict, default=None,
                   help='set attributes of every mixer before scoring, e.g. \'{"use_linear": false}\' (ablations)')
    g = p.add_argument_group("the suite (results in OUTPUT_DIR/suite or STUDENT/suite: suite.md, JSON, plots)")
    g.add_argument("--suite", default="agreement",
                   help="comma-separated parts: agreement (top-k / KL / perplexity, the default), recall, length, "
                        "lm-eval; or all")
    g.add_argument("--induction-lengths", type=int_list, help="recall: L of the repeated random tokens "
                   "(default: 16,32,64,128,256 where they fit the context)")
    g.add_argument("--passage-lengths", type=int_list, help="recall: L of the repeated held-out passages "
                   "(default: 32,64,128,256 where they fit)")
    g.add_argument("--sequences", type=int, default=100, help="recall: random sequences per length (default: 100)")
    g.add_argument("--passages", type=int, default=128, help="recall: held-out passages per length (default: 128)")
    g.add_argument("--fillers", type=int_list, help="recall: passkey filler lengths (default: 0,32,64,128,256)")
    g.add_argument("--trials", type=int, default=100, help="recall: passkey trials per form and filler (default: 100)")
    g.add_argument("--lengths", type=int_list, help="length: window lengths (default: 1x, 2x, 4x --seq-len, the "
                   "teacher's context and twice it)")
    g.add_argument("--decode-tokens", type=int, default=32, help="length: timed decode steps per length (default: 32)")
    g.add_argument("--lm-eval-limit", type=float, help="lm-eval: examples per task (default: all)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks on a student run (or any model), its teacher and "
                       "the no-mixing baseline: lm-eval's JSON and one teacher-vs-student table")
    p.add_argument("model", metavar="RUN|MODEL", help="a student run or adapter folder, or a Hugging Face model "
                   "folder or hub id")
    p.add_argument("--tasks", required=True, type=name_list, help="lm-eval task names, e.g. piqa,arc_easy,hellaswag,"
                   "lambada_openai (hub) or story_ending,final_word (make-tasks)")
    p.add_argument("--include-path", help="a folder of task YAMLs (make-tasks output)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--limit", type=float, help="examples per task (>= 1), or a fraction in (0, 1) (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--with-teacher", action="store_true", help="also the run's teacher, on the same examples")
    p.add_argument("--teacher", help="compare with this model instead of the run's teacher (implies --with-teacher)")
    p.add_argument("--with-no-mixing", action="store_true", help="also the teacher with attention zeroed (a run only)")
    p.add_argument("--output-dir", help="default: RUN/lm_eval (required for a plain model)")
    p.add_argument("--overwrite", action="store_true", help="replace another evaluation's results in --output-dir")
    p.add_argument("--base", help="base model of the adapter (default: the one it names)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--mixer-attrs", type=json_dict, default=None, help="as for eval (needs --output-dir)")
    p.set_defaults(fn=cmd_lm_eval)

    p = sub.add_parser("make-tasks", help="lm-eval task YAMLs + JSONL (story_ending, final_word) from the held-out "
                       "documents of your own text")
    p.add_argument("--model", required=True, help="the student run (its data split and tokenizer) or a model folder "
                   "/ hub id (its tokenizer and context)")
    p.add_argument("--data", help="local .txt/.jsonl/.parquet file or hub dataset (default: the run's --data)")
    p.add_argument("--output-dir", required=True, help="a new folder for the tasks (lm-eval --include-path)")
    add_held_out_args(p, ["test", "val"])
    p.add_argument("--choices", type=int, default=4, help="story_ending: endings per example (default: 4)")
    p.add_argument("--max-examples", type=int, default=0, help="per task; 0 = all (default)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_make_tasks)

    p = sub.add_parser("generate", help="sample from a student")
    p.add_argument("--student", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate, >= 1 (default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")
    p.add_argument("--base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("report", help="one Markdown table from the metrics.json of several runs")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--output", help="also write the table to this file")
    p.add_argument("--suite", action="store_true", help="instead: the runs' eval suites side by side (recall, "
                   "context length, lm-eval), teacher and no-mixing rows from the first")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("mixers", help="list registered mixers")
    p.set_defaults(fn=cmd_mixers)

    p = sub.add_parser("bench", help="time and memory of each mixer vs SDPA causal attention")
    p.add_argument("--d-model", type=int, default=256, help="width of the one layer timed (default: 256)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per timed call (default: 1)")
    p.add_argument("--seq-lens", default="256,512,1024,2048,4096,8192,16384",
                   help="sequence lengths, comma-separated (default: 256 to 16384; the long ones take minutes on CPU)")
    p.add_argument("--mixers", default="all", help="comma-separated mixer names, or all (default)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per cell; the median is kept (default: 3)")
    p.add_argument("--memory-limit-gb", type=float, default=8.0, help="skip sizes whose estimate exceeds this")
    p.add_argument("--output-dir", default="runs/bench", help="bench.json, bench.md, bench.png (default: runs/bench)")
    p.add_argument("--decode", action="store_true",
                   help="time per generated token and decoding memory after prompts of --prompts tokens instead")
    p.add_argument("--prompts", default="512,1024,2048,4096,8192,16384", help="(--decode) prompt lengths")
    p.add_argument("--decode-tokens", type=int, default=32, help="(--decode) timed tokens per cell")
    p.add_argument("--layers", type=int, default=4, help="(--decode) layers of the whole-model table")
    p.add_argument("--loss", action="store_true", help="peak memory of the KD loss alone, dense vs chunked, instead")
    p.add_argument("--loss-positions", type=int, default=16384, help="(--loss) positions")
    p.add_argument("--loss-vocab", type=int, default=151936, help="(--loss) vocabulary size (Qwen3's by default)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("demo", help="offline end-to-end run: build a tiny teacher, distill, evaluate, generate")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--mixer", default="learned_gate")
    p.add_argument("--steps", type=int, default=200, help="distillation steps")
    p.add_argument("--teacher-steps", type=int, default=600,
                   help="teacher pre-training steps (default 600: by then it copies names from earlier in a story)")
    p.add_argument("--stories", type=int, default=1500, help="synthetic stories to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="run the student again over a finished demo's")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # Keep stderr for messages: weight-loading progress bars would bury a one-line error.
    hf_logging.disable_progress_bar()
    try:
        args.fn(args)
    except WavedistillError as e:
        print(f"wavedistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wavedistill: interrupted; a run keeps its last checkpoint (--resume continues from it)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
