"""The training loop every stage shares: the run's state, ``train_steps``, val scoring and candidate selection.

Stages (:mod:`wavedistill.training.stages`) import this module, never the run that calls them
(:mod:`wavedistill.training.distill`). Training goes through Hugging Face accelerate: one process, or DDP /
FSDP across processes started by ``accelerate launch`` or ``torchrun`` (on CPU a gloo group); mixed
precision is accelerate's autocast over float32 master weights (fp16 with its gradient scaler);
gradients accumulate over ``grad_accum`` micro-batches. Every process draws the same global batch
``k`` (:meth:`Run.batch`: a dict of (B, ...) tensors, ``input_ids`` and, from a teacher cache, the
teacher's targets) and trains on its own contiguous share of the rows of every tensor, so N
processes and one process see the same tokens and take the same steps. Only the main process writes
logs, checkpoints and adapters; every process scores val (a few windows), so decisions taken on val
(selection, progressive's budget) agree everywhere without communication.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, is_aim_available, is_mlflow_available, is_wandb_available
from torch import nn
from tqdm import tqdm

from ..core.devices import MIXED_PRECISION
from ..core.params import param_groups
from ..data import eval_windows, train_batch, window_draw
from ..errors import TrainingError, WavedistillError
from ..evaluate import compare
from ..io import check_device_map, save_adapter
from ..surgery import (WaveAttention, decoder_layers, handoff_gate_parameters, mixer_parameters, set_handoff,
                       wave_attention_modules)
from ..surgery.lora import lora_parameters
from .checkpoint import save_checkpoint
from .config import DistillConfig

STUDENT_INIT = "student_init"  # a separate student's initial weights: the base of its adapters


def make_accelerator(cfg: DistillConfig):
    """The run's Accelerator: the launcher's process group (if any), the config's mixed precision."""
    # Accelerator state is per process; several runs in one process (tests, `compare`) may differ in dtype.
    AcceleratorState._reset_state()
    placed = cfg.teacher_device_map is not None
    tracker = {}
    if cfg.tracker != "tensorboard":  # TensorBoard is written directly; another tracker goes through accelerate
        available = {"wandb": is_wandb_available, "aim": is_aim_available, "mlflow": is_mlflow_available}
        if not available[cfg.tracker]():
            raise WavedistillError(f"--tracker {cfg.tracker} is not installed: "
                                   f"pip install 'wavedistill[{cfg.tracker}]'")
        tracker = {"log_with": cfg.tracker, "project_dir": cfg.output_dir}
    acc = Accelerator(cpu=cfg.device == "cpu", mixed_precision=MIXED_PRECISION[cfg.dtype], **tracker,
                      device_placement=not placed,  # a device-mapped model stays where its map put it
                      # a stage may leave some trainable parameters out of a step (hand-off at a = 0)
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if placed:
        check_device_map(cfg.teacher_device_map)
        if acc.num_processes > 1:
            raise WavedistillError("--teacher-device-map spreads one copy of the model over devices; it cannot be "
                                   "combined with several processes (use FSDP through `accelerate config` instead)")
    if cfg.dtype == "float16" and acc.scaler is None:
        raise WavedistillError(f"--dtype float16 needs a gradient scaler, which accelerate provides on CUDA only "
                               f"(device here: {acc.device}); use --dtype bfloat16 or float32")
    per_step = acc.num_processes * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise WavedistillError(f"--batch-size {cfg.batch_size} is the global batch; it must divide into "
                               f"{acc.num_processes} processes x {cfg.grad_accum} accumulation steps")
    return acc


class _Step(nn.Module):
    """What accelerate wraps (DDP / FSDP): the student, and a forward that computes a stage's loss.

    Stages compute their losses through the student's own modules; calling them inside this module's
    forward is what lets DDP prepare its gradient all-reduce for the backward that follows.
    """

    def __init__(self, student: nn.Module, features: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.features = features  # feature-loss projections: their gradients are all-reduced like the student's

    def forward(self, loss_fn, batch: dict, step: int) -> dict:
        return loss_fn(batch, step)


def trainable_counts(model: nn.Module, params=None) -> dict[str, int]:
    """Trainable parameters per group among ``params`` (default: all): mixers, lora, mlp, handoff_gates, and for a
    separate student also its attention, embeddings (input and output) and norms."""
    chosen = {id(p) for p in (params if params is not None else model.parameters()) if p.requires_grad}
    groups = {"mixers": {id(p) for p in mixer_parameters(model)},
              "lora": {id(p) for p in lora_parameters(model).values()},
              "handoff_gates": {id(p) for p in handoff_gate_parameters(model).values()}}
    counts = dict.fromkeys(("mixers", "lora", "mlp", "handoff_gates", "attention", "embeddings", "norms"), 0)
    for name, p in model.named_parameters():
        if id(p) not in chosen:
            continue
        group = next((g for g, ids in groups.items() if id(p) in ids), None) or next(
            (g for g, part in (("mlp", ".mlp."), ("attention", ".self_attn."), ("embeddings", "embed_tokens"),
                               ("embeddings", "lm_head")) if part in name), "norms")
        counts[group] += p.numel()
    return counts


def lr_schedule(optimizer, cfg: DistillConfig, n_steps: int):
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` of the lr (transformers')."""
    # lazy: transformers.optimization loads its Trainer utilities (and peft), ~3 s that only training needs
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, min(cfg.warmup_steps, n_steps), n_steps,
                                                       min_lr_rate=cfg.min_lr_ratio)


@torch.no_grad()
def layer_grad_norms(model: nn.Module) -> dict[int, float]:
    """The L2 norm of the gradients of each decoder layer's parameters (layers without gradients left out)."""
    norms = {}
    for i, block in enumerate(decoder_layers(model)):
        grads = [p.grad.float().norm() for p in block.parameters() if p.grad is not None]
        if grads:
            norms[i] = torch.stack(grads).norm().item()
    return norms


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
    acc: object  # accelerate.Accelerator
    writer: object = None
    log: object = None
    stage_index: int = 0
    step: int = 0  # optimizer steps so far
    batches: int = 0  # training batches drawn so far: batch k is self.batch(k)
    tokens_seen: int = 0
    best: tuple[float, int] = (float("inf"), -1)  # (val KL, step) of adapter/
    pending: dict[int, WaveAttention] = field(default_factory=dict)  # converted, not swapped in (progressive)
    records: list[dict] = field(default_factory=list)  # one summary per finished stage
    log_rows: int = 0  # rows written to train_log.jsonl
    resume_state: dict | None = None
    finished_part: dict | None = None  # the last train_steps call's resume state, kept in the final checkpoint
    teacher_cache: object = None  # training.teacher_cache.TeacherCache: training targets without a teacher forward
    student_layer_map: list[int] | None = None  # a separate student: the teacher layer of each student layer
    features: nn.Module | None = None  # features.FeatureProjection: trains with the student, not saved in it
    shared_vocab: int | None = None  # a separate student whose vocabulary rows differ: the rows both have

    @property
    def device(self) -> str:
        return str(self.acc.device)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def stage(self):
        return self.stages[self.stage_index] if self.stage_index < len(self.stages) else None

    @property
    def final_stage(self) -> bool:
        return self.stage_index >= len(self.stages) - 1

    @property
    def adapter_base(self) -> str:
        """The model an adapter of this run applies to: the teacher itself, or a separate student's initial
        state (``OUT/student_init``, a Hugging Face folder written when the run starts)."""
        return os.path.join(self.cfg.output_dir, STUDENT_INIT) if self.cfg.student else self.cfg.teacher

    @property
    def adapter_teacher(self) -> str | None:
        """The teacher an adapter records when it is not its base (a separate student's)."""
        return self.cfg.teacher if self.cfg.student else None

    def save_adapter(self, directory: str) -> None:
        save_adapter(self.student, directory, self.adapter_base, self.adapter_teacher)

    @property
    def autocast(self):
        return self.acc.autocast()

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Global training batch ``k``, a pure function of (seed, k): ``{"input_ids": (B, T)}``, and from a teacher
        cache also the teacher's targets ``topk_ids`` (B, T, k), ``topk_logp`` (B, T, k), ``rest_logp`` (B, T)."""
        cfg = self.cfg
        if self.teacher_cache is not None:
            return self.teacher_cache.batch(cfg.batch_size, cfg.seed, k)
        if cfg.train_windows == "fixed":  # the windows a teacher cache holds, drawn as a cached run draws them
            windows = eval_windows(self.splits.train, cfg.seq_len)
            return {"input_ids": windows[window_draw(len(windows), cfg.batch_size, cfg.seed, k)]}
        return {"input_ids": train_batch(self.splits.train, cfg.batch_size, cfg.seq_len, cfg.seed, k)}

    def resuming(self, part=None) -> dict | None:
        """The checkpoint state if this run resumes inside the current stage (and ``part``, when given)."""
        s = self.resume_state
        if s is None or s["stage_index"] != self.stage_index or s["part"] is None:
            return None
        return s if part is None or s["part"] == part else None

    def log_row(self, row: dict) -> None:
        self.log_rows += 1  # counted on every process: checkpoints carry it
        if self.main:
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()

    def scalar(self, name: str, value: float) -> None:
        if self.main:
            self.writer.add_scalar(name, value, self.step)
        if self.cfg.tracker != "tensorboard":
            self.acc.log({name: value}, step=self.step)  # accelerate logs on the main process only

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
    m = compare(run.teacher, run.student, run.val_windows, device=run.device, with_baseline=False,
                vocab=run.shared_vocab)
    run.student.train()
    for i, a in handoff.items():
        modules[i].handoff = a
    run.scalar("val/kl", m["kl"])
    run.scalar("val/top5_overlap", m["top5_overlap"])
    if run.final_stage and m["kl"] < run.best[0]:
        run.best = (m["kl"], run.step)
        if run.main:
            run.save_adapter(os.path.join(run.cfg.output_dir, "adapter"))
    return {"val_kl": m["kl"], "val_top5": m["top5_overlap"]}


def log_candidate(run: Run) -> dict:
    """Score the student as it stands (no step taken) and log it as a row of its own."""
    name = f"{run.stage_index}:{run.stage.kind}" if run.stage else "untrained"
    row = {"step": run.step, "stage": name, "tokens_seen": run.tokens_seen,
           **evaluate(run)}
    run.log_row(row)
    return row


def _prepare(run: Run, params: list, lr: float, n_steps: int, part):
    """(model, optimizer, scheduler, first step) of one :func:`train_steps` call: AdamW and the lr schedule over
    ``params``, prepared by accelerate, restored from the checkpoint when the run stopped inside ``part``."""
    cfg, acc = run.cfg, run.acc
    optimizer = torch.optim.AdamW(param_groups(params, cfg.weight_decay), lr=lr, betas=(0.9, 0.95))
    scheduler = lr_schedule(optimizer, cfg, n_steps)
    # The scheduler stays unprepared: accelerate would step it once per process.
    model, optimizer = acc.prepare(_Step(run.student, run.features), optimizer)
    state = run.resuming(part)
    if state is None:
        return model, optimizer, scheduler, 0
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if acc.scaler is not None:
        acc.scaler.load_state_dict(state["scaler"])
    run.resume_state = None
    return model, optimizer, scheduler, state["part_step"]


def _gradients(run: Run, model, loss_fn, batch: dict, stage_step: int) -> dict[str, float]:
    """Accumulate one update's gradients over this process's rows of ``batch`` in ``grad_accum`` micro-batches;
    returns each logged loss, averaged over micro-batches and processes."""
    cfg, acc = run.cfg, run.acc
    share = cfg.batch_size // acc.num_processes  # rows of the global batch this process trains on
    rows = slice(acc.process_index * share, (acc.process_index + 1) * share)
    parts = {k: v[rows].to(acc.device).chunk(cfg.grad_accum) for k, v in batch.items()}
    micro = [dict(zip(parts, p)) for p in zip(*parts.values())]
    totals: dict[str, torch.Tensor] = {}
    for j, mb in enumerate(micro):
        # Gradients are all-reduced once, on the last micro-batch.
        sync = contextlib.nullcontext() if j == len(micro) - 1 else acc.no_sync(model)
        with sync:
            losses = model(loss_fn, mb, stage_step)
            acc.backward(losses["loss"] / len(micro))
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro)
    return dict(zip(totals, acc.reduce(torch.stack(list(totals.values())), reduction="mean").tolist()))


def train_steps(run: Run, part, params: list, n_steps: int, lr: float, loss_fn, before_step=None,
                extra_state=None) -> dict:
    """Train ``params`` for ``n_steps`` on ``loss_fn(batch, stage_step) -> {"loss": ..., ...}``.

    ``batch`` is this process's micro-batch of :meth:`Run.batch`: every tensor's share of the rows.

    ``part`` names this call inside the stage (progressive: the group index), so a resumed run
    continues the right one. One optimizer (AdamW) and cosine schedule with warm-up per call.
    Returns steps, tokens, training wall time (evaluation excluded) and tokens per second.
    """

    cfg, acc = run.cfg, run.acc
    params = [p for p in params if p.requires_grad]
    if not params:
        raise WavedistillError(f"stage {run.stage.kind!r} has no trainable parameters")
    model, optimizer, scheduler, start = _prepare(run, params, lr, n_steps, part)
    name = f"{run.stage_index}:{run.stage.kind}"
    tokens, wall, val_kl = 0, 0.0, None
    bar = tqdm(range(start, n_steps), initial=start, total=n_steps, desc=name, dynamic_ncols=True,
               disable=not run.main)
    for s in bar:
        t0 = time.perf_counter()
        if before_step is not None:
            before_step(s)
        batch = run.batch(run.batches)
        run.batches += 1
        n_tokens = batch["input_ids"].numel()
        means = _gradients(run, model, loss_fn, batch, s)
        if not math.isfinite(means["loss"]):  # on every process alike: the mean was reduced across them
            kept = (f"the last checkpoint in {cfg.output_dir} is untouched (--resume continues from it)"
                    if os.path.isdir(os.path.join(cfg.output_dir, "checkpoint")) else
                    "no checkpoint was written yet, so nothing is kept")
            raise TrainingError(f"loss became {means['loss']} at step {run.step + 1} (stage {name}); lower the "
                                f"stage's lr (now {lr}) or use --dtype float32; {kept}")
        # Read before clipping; logged under the step this update makes.
        grad_norms = layer_grad_norms(run.student) if cfg.grad_norm_every and \
            (run.step + 1) % cfg.grad_norm_every == 0 else {}
        acc.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        wall += time.perf_counter() - t0
        run.step += 1
        run.tokens_seen += n_tokens
        tokens += n_tokens
        row = {"step": run.step, "stage": name, "stage_step": s + 1, "tokens_seen": run.tokens_seen,
               "lr": scheduler.get_last_lr()[0], **means}
        if acc.scaler is not None:
            row["loss_scale"] = acc.scaler.get_scale()
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{tokens / max(wall, 1e-9):.0f}")
        for k, v in row.items():
            if k not in ("step", "stage", "stage_step", "tokens_seen"):
                run.scalar(f"train/{k}", v)
        for i, norm in grad_norms.items():
            run.scalar(f"grad_norm/layer_{i}", norm)
        last = s + 1 == n_steps
        if run.step % cfg.eval_every == 0 or last:
            row.update(evaluate(run))
            val_kl = row["val_kl"]
        run.log_row(row)
        if run.step % cfg.save_every == 0 or last:
            part_state = {"part": part, "part_step": s + 1, "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(),
                          "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                          **(extra_state() if extra_state else {})}
            save_checkpoint(run, part_state)
            if last:  # a finished run keeps it, so a larger --max-steps can train on from here
                run.finished_part = part_state
    bar.close()
    acc.free_memory()  # drop the prepared wrappers; the next stage prepares its own
    return {"steps": n_steps - start, "tokens": tokens, "train_wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None, "val_kl": val_kl,
            "trainable_params": trainable_counts(run.student, params)}
