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

import json
import math
import os
import random
import time
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import DistillConfig, recipe_stages, to_yaml
from .data import check_lengths, eval_windows, read_documents, split_documents, train_batch
from .errors import TrainingError, WavedistillError
from .evaluate import compare, evaluate_student, print_metrics, window_prompts, write_evaluation
from .checkpoint import restore_checkpoint, save_checkpoint, trainable_state  # noqa: F401  (stages use these)
from .io import ADAPTER_WEIGHTS, load_adapter_weights, load_teacher, save_adapter
from .surgery import (TeacherView, WaveAttention, convert, decoder_layers, keep_frozen_mlps, mixer_parameters,
                      set_handoff, unconvert, wave_attention_modules)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_output_dir(cfg: DistillConfig) -> None:
    """Refuse to start over a finished or partial run unless resuming; nothing is deleted."""
    out = cfg.output_dir
    existing = [n for n in ("adapter", "checkpoint", "metrics.json") if os.path.exists(os.path.join(out, n))]
    if cfg.resume and not os.path.isdir(os.path.join(out, "checkpoint")):
        raise WavedistillError(f"--resume given but {out!r} has no checkpoint/ to resume from")
    if existing and not cfg.resume:
        raise WavedistillError(f"{out!r} already holds a run ({', '.join(existing)}); pass --resume to continue it "
                               "or choose another --output-dir")


def resolve_device(name: str) -> str:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise WavedistillError(f"--device {name} asked for, but CUDA is not available; pass --device cpu")
    return name


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
    from .lora import add_mlp_lora, lora_parameters

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


def trainable_counts(model: nn.Module, params=None) -> dict[str, int]:
    """Trainable parameters per group (mixers, lora, mlp, handoff_gates, other), among ``params`` (default: all)."""
    from .lora import lora_parameters
    from .surgery import handoff_gate_parameters

    chosen = {id(p) for p in (params if params is not None else model.parameters()) if p.requires_grad}
    groups = {"mixers": {id(p) for p in mixer_parameters(model)},
              "lora": {id(p) for p in lora_parameters(model).values()},
              "handoff_gates": {id(p) for p in handoff_gate_parameters(model).values()}}
    counts = dict.fromkeys(("mixers", "lora", "mlp", "handoff_gates", "other"), 0)
    for name, p in model.named_parameters():
        if id(p) not in chosen:
            continue
        group = next((g for g, ids in groups.items() if id(p) in ids), "mlp" if ".mlp." in name else "other")
        counts[group] += p.numel()
    return counts


def param_groups(params, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if getattr(p, "_no_weight_decay", False) or p.dim() < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: DistillConfig, total_steps: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


@dataclass
class Run:
    """What every stage reads and advances. Counters run over the whole recipe."""

    cfg: DistillConfig
    stages: list
    teacher: nn.Module
    student: nn.Module
    tokenizer: object
    splits: object
    val_windows: torch.Tensor
    test_windows: torch.Tensor
    device: str
    writer: object = None
    log: object = None
    stage_index: int = 0
    step: int = 0  # optimizer steps so far
    batches: int = 0  # training batches drawn so far: batch k is train_batch(..., seed, k)
    tokens_seen: int = 0
    best: tuple[float, int] = (float("inf"), -1)  # (val KL, step) of adapter/
    pending: dict[int, WaveAttention] = field(default_factory=dict)  # converted, not swapped in (progressive)
    records: list[dict] = field(default_factory=list)  # one summary per finished stage
    log_rows: int = 0  # rows written to train_log.jsonl
    resume_state: dict | None = None

    @property
    def stage(self):
        return self.stages[self.stage_index] if self.stage_index < len(self.stages) else None

    @property
    def final_stage(self) -> bool:
        return self.stage_index >= len(self.stages) - 1

    @property
    def autocast(self):
        return torch.autocast(self.device.split(":")[0], dtype=DTYPES[self.cfg.dtype],
                              enabled=self.cfg.dtype != "float32")

    def resuming(self, part=None) -> dict | None:
        """The checkpoint state if this run resumes inside the current stage (and ``part``, when given)."""
        s = self.resume_state
        if s is None or s["stage_index"] != self.stage_index or s["part"] is None:
            return None
        return s if part is None or s["part"] == part else None

    def log_row(self, row: dict) -> None:
        self.log.write(json.dumps(row) + "\n")
        self.log.flush()
        self.log_rows += 1

    def reset_selection(self) -> None:
        """The converted layers changed: earlier candidates are another architecture and no longer count."""
        if self.final_stage:
            self.best = (float("inf"), -1)


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Val KL and top-5 overlap of the teacher-free student (any hand-off switched off for the measurement);
    in the last stage, a new lowest KL replaces adapter/."""
    modules = wave_attention_modules(run.student)
    handoff = {i: m.handoff for i, m in modules.items()}
    set_handoff(run.student, None)
    run.student.eval()
    m = compare(run.teacher, run.student, run.val_windows, device=run.device, with_baseline=False)
    run.student.train()
    for i, a in handoff.items():
        modules[i].handoff = a
    run.writer.add_scalar("val/kl", m["kl"], run.step)
    run.writer.add_scalar("val/top5_overlap", m["top5_overlap"], run.step)
    if run.final_stage and m["kl"] < run.best[0]:
        run.best = (m["kl"], run.step)
        save_adapter(run.student, os.path.join(run.cfg.output_dir, "adapter"), run.cfg.teacher)
    return {"val_kl": m["kl"], "val_top5": m["top5_overlap"]}


def log_candidate(run: Run) -> dict:
    """Score the student as it stands (no step taken) and log it as a row of its own."""
    name = f"{run.stage_index}:{run.stage.kind}" if run.stage else "untrained"
    row = {"step": run.step, "stage": name, "tokens_seen": run.tokens_seen,
           **evaluate(run)}
    run.log_row(row)
    return row


def train_steps(run: Run, part, params: list, n_steps: int, lr: float, loss_fn, before_step=None,
                extra_state=None) -> dict:
    """Train ``params`` for ``n_steps`` on ``loss_fn(input_ids, stage_step) -> {"loss": ..., ...}``.

    ``part`` names this call inside the stage (progressive: the group index), so a resumed run
    continues the right one. Returns steps, tokens, training wall time (evaluation excluded) and
    tokens per second.
    """
    from tqdm import tqdm

    cfg = run.cfg
    params = [p for p in params if p.requires_grad]
    if not params:
        raise WavedistillError(f"stage {run.stage.kind!r} has no trainable parameters")
    optimizer = torch.optim.AdamW(param_groups(params, cfg.weight_decay), lr=lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, n_steps))
    # float16 overflows / underflows gradients without loss scaling (bf16 has float32's range and needs none).
    scaler = torch.amp.GradScaler(run.device.split(":")[0], enabled=cfg.dtype == "float16")
    start = 0
    state = run.resuming(part)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler", {}))
        start = state["part_step"]
        run.resume_state = None
    name = f"{run.stage_index}:{run.stage.kind}"
    tokens, wall, val_kl = 0, 0.0, None
    bar = tqdm(range(start, n_steps), initial=start, total=n_steps, desc=name, dynamic_ncols=True)
    for s in bar:
        t0 = time.perf_counter()
        if before_step is not None:
            before_step(s)
        ids = train_batch(run.splits.train, cfg.batch_size, cfg.seq_len, cfg.seed, run.batches).to(run.device)
        run.batches += 1
        losses = loss_fn(ids, s)
        if not torch.isfinite(losses["loss"]):
            raise TrainingError(f"loss became {losses['loss'].item()} at step {run.step + 1} (stage {name}); lower the "
                                f"stage's lr (now {lr}) or use --dtype float32. The last checkpoint in "
                                f"{cfg.output_dir} is untouched.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        wall += time.perf_counter() - t0
        run.step += 1
        run.tokens_seen += ids.numel()
        tokens += ids.numel()
        row = {"step": run.step, "stage": name, "stage_step": s + 1, "tokens_seen": run.tokens_seen,
               "lr": scheduler.get_last_lr()[0], **{k: float(v.detach()) for k, v in losses.items()}}
        if scaler.is_enabled():
            row["loss_scale"] = scaler.get_scale()
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{tokens / max(wall, 1e-9):.0f}")
        for k, v in row.items():
            if k not in ("step", "stage", "stage_step", "tokens_seen"):
                run.writer.add_scalar(f"train/{k}", v, run.step)
        last = s + 1 == n_steps
        if run.step % cfg.eval_every == 0 or last:
            row.update(evaluate(run))
            val_kl = row["val_kl"]
        run.log_row(row)
        if run.step % cfg.save_every == 0 or last:
            save_checkpoint(run, {"part": part, "part_step": s + 1, "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                  **(extra_state() if extra_state else {})})
    bar.close()
    return {"steps": n_steps - start, "tokens": tokens, "train_wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None, "val_kl": val_kl,
            "trainable_params": trainable_counts(run.student, params)}


def run(cfg: DistillConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    from .stages import RUNNERS

    check_output_dir(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    base, tokenizer = load_teacher(cfg.teacher, dtype=DTYPES[cfg.dtype], device=device)
    docs = read_documents(cfg.data, cfg.n_samples or (0 if os.path.exists(cfg.data) else 20000))
    splits = split_documents(docs, tokenizer, cfg.val_frac, cfg.test_frac)
    check_lengths(splits, cfg.seq_len)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    stages = recipe_stages(cfg, default_steps=max(1, math.ceil(cfg.epochs * len(splits.train) / tokens_per_step)))
    student = build_student(base, cfg).to(device)
    r = Run(cfg, stages, TeacherView(student), student, tokenizer, splits,
            eval_windows(splits.val, cfg.seq_len, cfg.val_windows), eval_windows(splits.test, cfg.seq_len,
                                                                                 cfg.test_windows), device)

    os.makedirs(cfg.output_dir, exist_ok=True)
    if cfg.resume:
        restore_checkpoint(r)
        print(f"resuming {cfg.output_dir} at step {r.step} (stage {r.stage_index} of {len(stages)})")
    else:
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
            f.write(to_yaml(cfg))
        with open(os.path.join(cfg.output_dir, "data_split.json"), "w") as f:
            json.dump({**splits.summary(), "val_windows": len(r.val_windows), "test_windows": len(r.test_windows),
                       "seq_len": cfg.seq_len}, f, indent=2)
    counts = trainable_counts(r.student)
    print(f"teacher {cfg.teacher} | mixer {cfg.wave_type} on layers {r.student.wavedistill_config['layers']} | "
          f"recipe {' -> '.join(s.kind for s in stages) or 'none (untrained)'} | trainable params "
          f"{', '.join(f'{k} {v:,}' for k, v in counts.items() if v)} | train tokens {len(splits.train):,} | "
          f"{tokens_per_step} tokens per step | device {device}")

    log_path = os.path.join(cfg.output_dir, "train_log.jsonl")
    if cfg.resume:
        # Rows after the checkpoint were logged by the killed run and will be redone: drop them.
        with open(log_path) as f:
            kept = [line for line in f if line.strip()][: r.log_rows]
        with open(log_path, "w") as f:
            f.writelines(kept)
    r.writer = SummaryWriter(cfg.output_dir, purge_step=r.step + 1 if cfg.resume else None)
    r.log = open(log_path, "a")
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
        save_checkpoint(r, {"stage_index": i + 1})
    r.writer.close()
    r.log.close()

    # Logits of the in-memory student at the end of training (the state in checkpoint/), so a
    # fresh process can check that load_student(DIR/checkpoint) reproduces them.
    with torch.no_grad():
        probe = r.test_windows[:1].to(device)
        save_file({"input_ids": probe.cpu(), "logits": r.student.eval()(probe, use_cache=False).logits.float().cpu()},
                  os.path.join(cfg.output_dir, "final_logits.safetensors"))
    return finish(r, counts)


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
    metrics, rows = evaluate_student(r.teacher, student, r.tokenizer, r.test_windows, prompts, device=r.device)
    if cfg.lora_merge:
        from .lora import merge_mlp_lora

        merge_mlp_lora(student)
        save_adapter(student, adapter, cfg.teacher)
    converted = student.wavedistill_config["layers"]
    metrics.update({"split": "test", "mixer": cfg.wave_type, "layers": converted,
                    "kept_attention_layers": [i for i in range(len(decoder_layers(student))) if i not in converted],
                    "recipe": [rec["kind"] for rec in r.records], "stages": r.records, "steps": r.step,
                    "tokens_seen": r.tokens_seen, "train_wall_s": round(sum(x.get("train_wall_s", 0.0)
                                                                            for x in r.records), 1),
                    "trainable_params": counts, "lora": {"r": cfg.lora_mlp, "merged": cfg.lora_merge}
                    if cfg.lora_mlp else None, "seq_len": cfg.seq_len, "selected_step": r.best[1],
                    "selected_val_kl": r.best[0]})
    write_evaluation(cfg.output_dir, metrics, rows)
    print_metrics(metrics, title=f"{cfg.wave_type}: test split, {metrics['positions']} positions")
    return metrics
