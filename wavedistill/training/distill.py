"""The distillation run, top to bottom: load, convert, split data, run the recipe's stages, select, evaluate.

Every stage trains through :func:`train_steps` (one optimizer and cosine schedule per stage, or
per swapped group in ``progressive``), which logs each step, scores val every ``eval_every`` steps
and checkpoints every ``save_every``. Selection: ``adapter/`` is the student with the lowest val KL
among the evaluations of the *last* stage (its starting point included), restarted whenever that
stage changes which layers are converted, so the selected student is always the final architecture.

Output folder:
    config.yaml          resolved config          data_split.json   documents / tokens per split
    adapter/             selected student         checkpoint/       last state for --resume
    metrics.json         test-split metrics, per-stage summaries, trainable parameters per group
    samples.md           side-by-side generations train_log.jsonl   per-step scalars (with the stage)
    events.out.tfevents.*   TensorBoard
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.configs import to_yaml
from ..core.devices import DTYPES, resolve_device
from ..core.rss import peak_mb
from ..core.run_folder import claim, contents, read_manifest
from ..data import check_lengths, eval_windows, run_splits
from ..errors import WavedistillError
from ..evaluate import evaluate_student, print_metrics, window_prompts, write_evaluation
from ..io import ADAPTER_WEIGHTS, load_adapter_weights, load_teacher, write_text
from ..kd.features import FeatureProjection
from ..surgery import (TeacherView, convert, converted_layers, decoder_layers, keep_frozen_mlps, params_in_use,
                       unconvert, wave_attention_modules)
from ..surgery.lora import add_mlp_lora, lora_parameters, merge_mlp_lora
from .checkpoint import restore_checkpoint, save_checkpoint
from .config import DistillConfig, check_resume, recipe_stages, recorded_settings, saved_config
from .loop import STUDENT_INIT, Run, log_candidate, make_accelerator, trainable_counts
from .stages import RUNNERS
from .student import save_student_folder, student_for_run, student_summary
from .teacher_cache import open_for_run


def check_output_dir(cfg: DistillConfig) -> bool:
    """Claim the output folder (run_folder.claim: refused if it holds another run or foreign files unless
    --overwrite), and check a --resume against the run's config.yaml and checkpoint; nothing is deleted unasked.
    Returns whether the folder was empty when claimed (a run that fails before its first checkpoint removes it)."""

    out = cfg.output_dir
    command = "kd" if cfg.student else "distill"
    if cfg.resume and not os.path.isdir(os.path.join(out, "checkpoint")):
        if read_manifest(out).get("command") != command:
            raise WavedistillError(f"--resume given but {out!r} has no checkpoint/ to resume from; drop --resume to "
                                   "start a run there")
        # the run stopped before its first checkpoint: start it again, with the settings it recorded
        if not os.path.isfile(os.path.join(out, "config.yaml")):
            raise WavedistillError(f"{out!r} holds a run stopped before it recorded its settings; pass --overwrite "
                                   "instead of --resume to start it again")
        check_resume(cfg)
        print(f"{out} has no checkpoint yet: starting its run again from step 0")
        cfg.resume, cfg.overwrite = False, True
    was_empty = not contents(out) or cfg.overwrite
    claim(out, command, resume=cfg.resume, overwrite=cfg.overwrite, settings=recorded_settings(cfg))
    if not cfg.resume:
        return was_empty
    check_resume(cfg)
    if os.path.isfile(os.path.join(out, "metrics.json")):
        done = saved_config(out).get("max_steps") or 0
        if cfg.stages or not done or cfg.max_steps <= done:
            raise WavedistillError(f"{out!r} holds a finished run (metrics.json); there is nothing to resume"
                                   + ("" if cfg.stages or not done else
                                      f": pass --max-steps larger than its {done} to train on from its last step"))
    return False


def resumable(folder: str) -> bool:
    """Whether a command that runs distill into ``folder`` on its own (compare, layers) should pass resume: the
    folder holds an unfinished distill run, with a checkpoint or stopped before its first one (distill then
    starts it again with the settings it recorded)."""

    return os.path.isdir(os.path.join(folder, "checkpoint")) or read_manifest(folder).get("command") == "distill"


def wave_layers(cfg: DistillConfig, n_layers: int) -> list[int]:
    """Layers to convert: ``layers`` (default all) minus the ones a hybrid keeps as attention."""
    keep = set(cfg.keep_attention or [])
    if cfg.keep_attention_every > 0:
        keep |= set(range(0, n_layers, cfg.keep_attention_every))
    bad = sorted(i for i in keep if not 0 <= i < n_layers)
    if bad:
        raise WavedistillError(f"--keep-attention layers {bad} out of range: the model has {n_layers} layers")
    chosen = list(range(n_layers)) if cfg.layers is None else list(cfg.layers)
    if cfg.layers is not None and keep & set(chosen):
        raise WavedistillError(f"layers {sorted(keep & set(chosen))} are both in --layers and kept as attention")
    chosen = [i for i in chosen if i not in keep]
    if not chosen:
        raise WavedistillError("every layer is kept as attention: nothing to convert")
    return chosen


def build_student(base, cfg: DistillConfig):
    """Convert ``base`` in place into the student: mixers swapped in (and LoRA / unfrozen MLPs for recovery).

    The student shares every frozen weight with its base, so one copy of the base serves as teacher
    too (:class:`~wavedistill.surgery.TeacherView`); only what trains is float32. Low-precision runs
    use autocast over those float32 master weights: AdamW on bf16 weights loses small updates of O(1)
    wave parameters.
    """

    student = base
    convert(student, cfg.wave_type, layers=wave_layers(cfg, len(decoder_layers(student))), **cfg.mixer_kwargs)
    for i, m in wave_attention_modules(student).items():
        m.mixer.float()
        for name in cfg.reinit or []:
            part = getattr(m.mixer, name, None)
            if not isinstance(part, nn.Module) or not hasattr(part, "reset_parameters"):
                unconvert(student)
                raise WavedistillError(f"--reinit {name}: the {cfg.wave_type} mixer of layer {i} has no such "
                                       "re-initialisable part (e.g. q_proj, k_proj)")
            part.reset_parameters()  # PyTorch's default init, as if never copied from the teacher
    if cfg.unfreeze_mlps:
        keep_frozen_mlps(student)  # the teacher view runs these originals
        for block in decoder_layers(student):
            train_in_float32(block.mlp)
    if cfg.lora_mlp:
        add_mlp_lora(student, cfg.lora_mlp, cfg.lora_alpha or 2.0 * cfg.lora_mlp)
        for p in lora_parameters(student).values():
            p.data = p.data.float()
    return student.train()


def train_in_float32(module: nn.Module) -> None:
    """Make a frozen-dtype module trainable in float32 master weights, casting its input and output around it."""
    dtype = next(module.parameters()).dtype
    module.float().requires_grad_(True)
    if dtype != torch.float32:
        module.register_forward_pre_hook(lambda mod, args: tuple(a.float() for a in args))
        module.register_forward_hook(lambda mod, args, out: out.to(dtype))


def run(cfg: DistillConfig) -> dict | None:
    """The whole run; returns the test metrics on the main process (None on the others)."""
    resolve_device(cfg.device)
    acc = make_accelerator(cfg)
    cfg.num_processes = acc.num_processes
    restart = cfg.resume and not os.path.isdir(os.path.join(cfg.output_dir, "checkpoint"))
    fresh = check_output_dir(cfg) if acc.is_main_process else False
    if restart:  # every process starts the run again (the main one checked it may)
        cfg.resume, cfg.overwrite = False, True
    acc.wait_for_everyone()
    try:
        return train_and_evaluate(cfg, acc)
    except BaseException:
        # A run that fails before its first checkpoint leaves nothing behind (there is nothing to resume).
        if fresh and not os.path.isdir(os.path.join(cfg.output_dir, "checkpoint")):
            shutil.rmtree(cfg.output_dir, ignore_errors=True)
        raise


def train_and_evaluate(cfg: DistillConfig, acc) -> dict | None:
    """Load, convert, split, train the recipe's stages, select and evaluate, in the claimed output folder."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    r, offload = build_run(cfg, acc)
    if r.main:
        os.makedirs(cfg.output_dir, exist_ok=True)
    acc.wait_for_everyone()
    if cfg.resume:
        restore_checkpoint(r)
        if r.main:
            print(f"resuming {cfg.output_dir} at step {r.step} (stage {r.stage_index} of {len(r.stages)})")
    counts = trainable_counts(r.student)
    if r.main:
        open_logs(r, counts)
    if cfg.tracker != "tensorboard":
        start_tracker(cfg, acc)
    run_stages(r)
    acc.wait_for_everyone()
    if not r.main:
        return None
    r.writer.close()
    r.log.close()
    if cfg.tracker != "tensorboard":
        acc.end_training()
    # Logits of the in-memory student at the end of training (the state in checkpoint/), so a
    # fresh process can check that load_student(DIR/checkpoint) reproduces them.
    with torch.no_grad():
        probe = r.test_windows[:1].to(acc.device)
        save_file({"input_ids": probe.cpu(), "logits": r.student.eval()(probe, use_cache=False).logits.float().cpu()},
                  os.path.join(cfg.output_dir, "final_logits.safetensors"))
    metrics = finish(r, counts)
    if offload is not None:  # the offloaded weights are a copy of the base: no need to keep them
        shutil.rmtree(offload, ignore_errors=True)
    return metrics


def build_run(cfg: DistillConfig, acc) -> tuple[Run, str | None]:
    """The run's state: teacher, data splits, recipe, student (converted in place or separate), on its devices;
    and the folder a device-mapped base offloads to (None without a device map)."""
    placed = cfg.teacher_device_map is not None
    offload = os.path.join(cfg.output_dir, "offload") if placed else None  # disk offload of a device-mapped base
    base, tokenizer = load_teacher(cfg.teacher, dtype=DTYPES[cfg.teacher_dtype or cfg.dtype], device=acc.device,
                                   device_map=cfg.teacher_device_map, max_memory=cfg.teacher_max_memory,
                                   offload_folder=offload)
    splits = run_splits(cfg.data, tokenizer, n_samples=cfg.n_samples, val_frac=cfg.val_frac, test_frac=cfg.test_frac)
    check_lengths(splits, cfg.seq_len)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    stages = recipe_stages(cfg, default_steps=max(1, math.ceil(cfg.epochs * len(splits.train) / tokens_per_step)))
    cache = None
    if cfg.teacher_cache:  # checked against this teacher, tokenizer, split and recipe before anything is written
        cache = open_for_run(cfg, stages, base, tokenizer, splits)
    student_layer_map = rows = None
    if cfg.student is None:  # the student is the base with its mixers swapped in; the teacher a view of it
        student = build_student(base, cfg)
        teacher = TeacherView(student)
    else:  # a separate, smaller student; the base is only the teacher
        student, student_layer_map, rows = student_for_run(base, tokenizer, cfg)
        teacher = base
        if acc.is_main_process and not cfg.resume:
            save_student_folder(student, tokenizer, os.path.join(cfg.output_dir, STUDENT_INIT))
    if not placed:  # a device map placed every module already (the mixers where their layers compute)
        student = student.to(acc.device)
    if cfg.grad_checkpointing:
        # Non-reentrant: the embeddings are frozen, so the checkpointed inputs need no grad of their own.
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    r = Run(cfg, stages, teacher, student, tokenizer, splits,
            eval_windows(splits.val, cfg.seq_len, cfg.val_windows), eval_windows(splits.test, cfg.seq_len,
                                                                                 cfg.test_windows), acc,
            teacher_cache=cache, student_layer_map=student_layer_map, shared_vocab=rows)
    if student_layer_map is not None and any(getattr(s, "hidden_weight", 0) > 0 for s in stages):
        r.features = FeatureProjection(student.config.hidden_size, base.config.hidden_size,
                                       len(student_layer_map)).to(acc.device)
    return r, offload


def open_logs(r: Run, counts: dict) -> None:
    """On the main process: config.yaml, data_split.json, the run's one-line summary, train_log.jsonl (cut back to
    the checkpoint on resume) and TensorBoard."""
    # lazy: loads TensorBoard's protobuf stack, only on the main process of a run
    from torch.utils.tensorboard import SummaryWriter

    cfg, cache, splits, stages, acc = r.cfg, r.teacher_cache, r.splits, r.stages, r.acc
    # The settings the run trains with (a resume's allowed changes included); how it was started is no setting.
    # A separate student's map as the teacher layers it resolved to (the strategy's name alone hides them).
    saved = dataclasses.replace(cfg, resume=False, overwrite=False)
    if r.student_layer_map is not None:
        saved = dataclasses.replace(saved, student=dataclasses.replace(cfg.student,
                                                                        layer_map=list(r.student_layer_map)))
    write_text(os.path.join(cfg.output_dir, "config.yaml"), to_yaml(saved))
    if not cfg.resume:
        with open(os.path.join(cfg.output_dir, "data_split.json"), "w") as f:
            json.dump({**splits.summary(), "val_windows": len(r.val_windows), "test_windows": len(r.test_windows),
                       "seq_len": cfg.seq_len}, f, indent=2)
    source = f" (training targets: top-{cache.meta['top_k']} cache {cfg.teacher_cache})" if cache else ""
    print(f"teacher {cfg.teacher}{source} | {describe_student(r)} | "
          f"recipe {' -> '.join(s.kind for s in stages) or 'none (untrained)'} | trainable params "
          f"{', '.join(f'{k} {v:,}' for k, v in counts.items() if v)} | train tokens {len(splits.train):,} | "
          f"{cfg.batch_size * cfg.seq_len} tokens per step | {acc.num_processes} process(es), "
          f"{acc.distributed_type.value}, device {acc.device}, mixed precision {acc.mixed_precision}")
    log_path = os.path.join(cfg.output_dir, "train_log.jsonl")
    if cfg.resume:
        # Rows after the checkpoint were logged by the killed run and will be redone: drop them.
        with open(log_path) as f:
            kept = [line for line in f if line.strip()][: r.log_rows]
        with open(log_path, "w") as f:
            f.writelines(kept)
    r.writer = SummaryWriter(cfg.output_dir, purge_step=r.step + 1 if cfg.resume else None)
    r.log = open(log_path, "a")


def run_stages(r: Run) -> None:
    """The recipe's stages from where the run stands, each followed by a checkpoint."""
    stages = r.stages
    if not stages:
        log_candidate(r)  # --no-train: the teacher-initialised student is the only candidate
    for i in range(r.stage_index, len(stages)):
        r.stage_index = i
        stage = stages[i]
        if r.final_stage and r.resuming() is None and stage.kind != "progressive":
            # The starting point of the last stage is a candidate too: training must beat it
            # (progressive changes the architecture first and scores its own starting points).
            log_candidate(r)
        summary = {"stage": i, "kind": stage.kind, **RUNNERS[stage.kind](r, stage)}
        r.records.append(summary)
        r.resume_state = None
        save_checkpoint(r, {"stage_index": i + 1, "finished_part": r.finished_part if r.final_stage else None})
        r.finished_part = None


def start_tracker(cfg: DistillConfig, acc) -> None:
    """accelerate's tracker for ``cfg.tracker``, with the run's settings as its parameters. MLflow logs to
    ``OUT/mlruns`` unless MLFLOW_TRACKING_URI says otherwise: a local file store, which needs no server or
    database (MLflow 3 keeps it in maintenance mode and asks for MLFLOW_ALLOW_FILE_STORE, set here for it);
    wandb follows WANDB_MODE (``offline`` writes under ``OUT/wandb``)."""

    if cfg.tracker == "mlflow" and "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = "file://" + os.path.abspath(os.path.join(cfg.output_dir, "mlruns"))
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    params = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
              for k, v in dataclasses.asdict(cfg).items()}
    acc.init_trackers(os.path.basename(os.path.normpath(cfg.output_dir)) or "wavedistill", config=params,
                      init_kwargs={"wandb": {"dir": cfg.output_dir}})


def separate_student(r: Run) -> dict | None:
    """:func:`.student.student_summary` of a separate student; None when the teacher was converted."""
    if r.student_layer_map is None:
        return None

    return student_summary(r.student, r.student_layer_map, r.cfg.student.mixer)


def describe_student(r: Run) -> str:
    s = separate_student(r)
    if s is None:
        return f"mixer {r.cfg.wave_type} on layers {converted_layers(r.student)}"
    return (f"separate student: {s['layers']} layers, hidden {s['hidden_size']}, {s['heads']} / {s['kv_heads']} "
            f"heads, MLP {s['intermediate_size']}, {s['mixer']}, {s['params']:,} params; layer map (teacher layer "
            f"of each student layer) {s['layer_map']}")


def finish(r: Run, counts: dict) -> dict:
    """Load the selected adapter (best val KL) from disk into the student and score it on the test split.

    With ``lora_merge`` the LoRA update is folded into the MLP weights after scoring (the base's MLPs
    are the teacher's too, and the teacher is not needed any more), and the adapter is rewritten.
    """
    cfg = r.cfg
    adapter = os.path.join(cfg.output_dir, "adapter")
    load_adapter_weights(r.student, load_file(os.path.join(adapter, ADAPTER_WEIGHTS)), adapter)
    student = r.student.eval()
    prompts = window_prompts(r.splits.test, cfg.seq_len, cfg.n_generations)
    metrics, rows = evaluate_student(r.teacher, student, r.tokenizer, r.test_windows, prompts, device=r.device,
                                     vocab=r.shared_vocab)
    if cfg.lora_merge:
        merge_mlp_lora(student)
        r.save_adapter(adapter)
    converted = converted_layers(student)
    separate = separate_student(r)
    if separate is not None:
        save_student_folder(student, r.tokenizer, os.path.join(cfg.output_dir, "student"), cfg.teacher, adapter=True)
        metrics["student"] = separate
    metrics["params"] = separate["params"] if separate else params_in_use(student)
    metrics.update({"split": "test", "mixer": separate["mixer"] if separate else cfg.wave_type,
                    "layers": converted,
                    "kept_attention_layers": [i for i in range(len(decoder_layers(student))) if i not in converted],
                    "recipe": [rec["kind"] for rec in r.records], "stages": r.records, "steps": r.step,
                    "tokens_seen": r.tokens_seen, "train_wall_s": round(sum(x.get("train_wall_s", 0.0)
                                                                            for x in r.records), 1),
                    "trainable_params": counts, "lora": {"r": cfg.lora_mlp, "merged": cfg.lora_merge}
                    if cfg.lora_mlp else None, "seq_len": cfg.seq_len, "selected_step": r.best[1],
                    "selected_val_kl": r.best[0], "peak_rss_mb": round(peak_mb(), 1),
                    "num_processes": r.acc.num_processes})
    write_evaluation(cfg.output_dir, metrics, rows)
    kind = "separate student" if cfg.student else "student"
    print_metrics(metrics, title=f"{kind} ({metrics['mixer']} mixing): test split, {metrics['positions']} positions")
    return metrics
