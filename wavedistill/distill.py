"""The distillation run, top to bottom: load, convert, split data, train with KL + CE, select, evaluate.

Output folder:
    config.yaml          resolved config          data_split.json   documents / tokens per split
    adapter/             best student by held-out (val) KL    checkpoint/   last state for --resume
    metrics.json         test-split metrics       samples.md        side-by-side generations
    train_log.jsonl      per-step scalars         events.out.tfevents.*   TensorBoard
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time

import torch
from safetensors.torch import load_file, save_file

from .config import DistillConfig, to_yaml
from .data import check_lengths, eval_windows, read_documents, split_documents, train_batch
from .errors import TrainingError, WavedistillError
from .evaluate import compare, evaluate_student, print_metrics, window_prompts, write_evaluation
from .io import ADAPTER_WEIGHTS, load_adapter_weights, load_teacher, replace_dir, save_adapter, write_adapter_files
from .losses import kd_loss
from .surgery import convert, decoder_layers

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


def build_student(teacher, cfg: DistillConfig):
    """A float32 copy of the teacher with mixers swapped in. Low-precision runs use autocast over these
    float32 master weights: AdamW on bf16 weights loses small updates of O(1) wave parameters."""
    student = copy.deepcopy(teacher).float()
    convert(student, cfg.wave_type, layers=wave_layers(cfg, len(decoder_layers(teacher))), **cfg.mixer_kwargs)
    if cfg.unfreeze_mlps:
        for block in decoder_layers(student):
            block.mlp.requires_grad_(True)
    return student.train()


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
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


def save_checkpoint(student, optimizer, scheduler, step: int, best: tuple[float, int], cfg: DistillConfig) -> None:
    """checkpoint/ = an adapter of the *last* state (loadable with load_student) + optimizer/RNG state."""
    ckpt = os.path.join(cfg.output_dir, "checkpoint")
    tmp = ckpt + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_adapter_files(student, tmp, cfg.teacher)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "best_val_kl": best[0], "best_step": best[1], "torch_rng": torch.get_rng_state(),
             "python_rng": random.getstate()}
    torch.save(state, os.path.join(tmp, "state.pt"))
    replace_dir(tmp, ckpt)


def load_checkpoint(student, optimizer, scheduler, cfg: DistillConfig) -> tuple[int, tuple[float, int]]:
    ckpt = os.path.join(cfg.output_dir, "checkpoint")
    load_adapter_weights(student, load_file(os.path.join(ckpt, ADAPTER_WEIGHTS)), ckpt)
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(_as_python_state(state["python_rng"]))
    return state["step"], (state["best_val_kl"], state["best_step"])


def _as_python_state(state):
    # weights_only loading turns the tuple state into lists; random.setstate wants tuples.
    return (state[0], tuple(state[1]), state[2])


@torch.no_grad()
def val_kl(teacher, student, windows, device) -> float:
    student.eval()
    m = compare(teacher, student, windows, device=device, with_baseline=False)
    student.train()
    return m["kl"]


def run(cfg: DistillConfig) -> dict:
    check_output_dir(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    teacher, tokenizer = load_teacher(cfg.teacher, dtype=DTYPES[cfg.dtype], device=device)
    docs = read_documents(cfg.data, cfg.n_samples or (0 if os.path.exists(cfg.data) else 20000))
    splits = split_documents(docs, tokenizer, cfg.val_frac, cfg.test_frac)
    check_lengths(splits, cfg.seq_len)
    val_windows = eval_windows(splits.val, cfg.seq_len, cfg.val_windows)
    test_windows = eval_windows(splits.test, cfg.seq_len, cfg.test_windows)
    student = build_student(teacher, cfg)

    tokens_per_step = cfg.batch_size * cfg.seq_len
    total_steps = (cfg.max_steps or math.ceil(cfg.epochs * len(splits.train) / tokens_per_step)) if cfg.train else 0
    optimizer = torch.optim.AdamW(param_groups(student, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)

    os.makedirs(cfg.output_dir, exist_ok=True)
    start_step, best = 0, (float("inf"), 0)  # (val KL, step) of the adapter/ checkpoint
    if cfg.resume:
        start_step, best = load_checkpoint(student, optimizer, scheduler, cfg)
        print(f"resuming {cfg.output_dir} at step {start_step} of {total_steps}")
    else:
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
            f.write(to_yaml(cfg))
        with open(os.path.join(cfg.output_dir, "data_split.json"), "w") as f:
            json.dump({**splits.summary(), "val_windows": len(val_windows), "test_windows": len(test_windows),
                       "seq_len": cfg.seq_len}, f, indent=2)
    print(f"teacher {cfg.teacher} | mixer {cfg.wave_type} on layers {student.wavedistill_config['layers']} | "
          f"trainable params {trainable:,} | train tokens {len(splits.train):,} | {total_steps} steps of "
          f"{tokens_per_step} tokens | device {device}")

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    log_path = os.path.join(cfg.output_dir, "train_log.jsonl")
    if cfg.resume:
        # Steps after the checkpoint were logged by the killed run and will be redone: drop them.
        with open(log_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
        with open(log_path, "w") as f:
            f.writelines(kept)
    writer = SummaryWriter(cfg.output_dir, purge_step=start_step + 1 if cfg.resume else None)
    log = open(log_path, "a")
    if start_step == 0:
        # The teacher-initialised student is a candidate too: training must beat it to be selected.
        best = (val_kl(teacher, student, val_windows, device), 0)
        save_adapter(student, os.path.join(cfg.output_dir, "adapter"), cfg.teacher)
        writer.add_scalar("val/kl", best[0], 0)
        log.write(json.dumps({"step": 0, "tokens_seen": 0, "val_kl": best[0]}) + "\n")
    bar = tqdm(range(start_step, total_steps), initial=start_step, total=total_steps, dynamic_ncols=True)
    t0, tokens_since = time.time(), 0
    autocast = torch.autocast(device.split(":")[0], dtype=DTYPES[cfg.dtype], enabled=cfg.dtype != "float32")
    for step in bar:
        ids = train_batch(splits.train, cfg.batch_size, cfg.seq_len, cfg.seed, step).to(device)
        with torch.no_grad():
            t_logits = teacher(ids, use_cache=False).logits
        with autocast:
            s_logits = student(ids, use_cache=False).logits
        losses = kd_loss(s_logits, t_logits, ids, temperature=cfg.temperature, alpha=cfg.alpha)
        if not torch.isfinite(losses["loss"]):
            raise TrainingError(f"loss became {losses['loss'].item()} at step {step}; lower --lr (now {cfg.lr}) or "
                                f"use --dtype float32. The last checkpoint in {cfg.output_dir} is untouched.")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        scheduler.step()

        tokens_since += ids.numel()
        tok_s = tokens_since / max(time.time() - t0, 1e-9)
        row = {"step": step + 1, "tokens_seen": (step + 1) * tokens_per_step, "lr": scheduler.get_last_lr()[0],
               **{k: v.item() for k, v in losses.items()}}
        bar.set_postfix(loss=f"{row['loss']:.3f}", kl=f"{row['kl']:.3f}", ce=f"{row['ce']:.3f}", tok_s=f"{tok_s:.0f}")
        for k in ("loss", "kl", "ce", "lr"):
            writer.add_scalar(f"train/{k}", row[k], step + 1)
        writer.add_scalar("train/tokens_per_s", tok_s, step + 1)

        last = step + 1 == total_steps
        if (step + 1) % cfg.eval_every == 0 or last:
            row["val_kl"] = val_kl(teacher, student, val_windows, device)
            writer.add_scalar("val/kl", row["val_kl"], step + 1)
            if row["val_kl"] < best[0]:
                best = (row["val_kl"], step + 1)
                save_adapter(student, os.path.join(cfg.output_dir, "adapter"), cfg.teacher)
        log.write(json.dumps(row) + "\n")
        log.flush()
        if (step + 1) % cfg.save_every == 0 or last:
            save_checkpoint(student, optimizer, scheduler, step + 1, best, cfg)
    bar.close()
    writer.close()
    log.close()
    wall = time.time() - t0

    # Logits of the in-memory student at the end of training (the state in checkpoint/), so a
    # fresh process can check that load_student(DIR/checkpoint) reproduces them.
    with torch.no_grad():
        probe = test_windows[:1].to(device)
        save_file({"input_ids": probe.cpu(), "logits": student.eval()(probe, use_cache=False).logits.float().cpu()},
                  os.path.join(cfg.output_dir, "final_logits.safetensors"))
    return finish(cfg, teacher, tokenizer, test_windows, splits, total_steps, wall, device, best)


def finish(cfg, teacher, tokenizer, test_windows, splits, total_steps, wall, device, best) -> dict:
    """Reload the selected adapter (best val KL) onto a fresh copy and score it on the test split."""
    from .io import apply_adapter

    student = apply_adapter(copy.deepcopy(teacher), os.path.join(cfg.output_dir, "adapter")).eval()
    prompts = window_prompts(splits.test, cfg.seq_len, cfg.n_generations)
    metrics, rows = evaluate_student(teacher, student, tokenizer, test_windows, prompts, device=device)
    converted = student.wavedistill_config["layers"]
    metrics.update({"split": "test", "mixer": cfg.wave_type, "layers": converted,
                    "kept_attention_layers": [i for i in range(len(decoder_layers(student))) if i not in converted],
                    "steps": total_steps, "tokens_seen": total_steps * cfg.batch_size * cfg.seq_len,
                    "train_wall_s": round(wall, 1), "seq_len": cfg.seq_len,
                    "selected_step": best[1], "selected_val_kl": best[0]})
    write_evaluation(cfg.output_dir, metrics, rows)
    print_metrics(metrics, title=f"{cfg.wave_type}: test split, {metrics['positions']} positions")
    return metrics
