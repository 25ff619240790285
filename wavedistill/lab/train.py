"""Train one seed of one lab run, top to bottom (nanoGPT ``train.py`` shape, as a function).

Every step logs the training batch's loss and accuracy to TensorBoard. Every ``eval_every`` steps
(and at steps 1 and last) the model is scored on the training set (all of it for full-batch tasks,
else its first 2,048 rows) and on the held-out test set, and one row goes to ``train_log.jsonl``
and TensorBoard. Step marks, from those evaluations:
* ``memorization_step``: the first evaluated step with train accuracy >= ``grok_threshold``;
* ``grok_step``: the first evaluated step after which test accuracy stays >= ``grok_threshold`` until
  the run ends (None if the last evaluation is below it). With ``stop_after_grok`` > 0 a run ends
  once test accuracy has stayed above the threshold for that many steps.
A seed folder holds ``config.yaml`` (resolved, with seed and package version), ``train_log.jsonl``,
TensorBoard events, ``model.safetensors`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from .. import __version__
from ..errors import TrainingError, WavedistillError
from ..loop import param_groups
from .config import LabConfig, resolve
from .model import WaveTransformer
from .tasks import IGNORE, build_task


def build_model(cfg: LabConfig, task) -> WaveTransformer:
    r = resolve(cfg)
    return WaveTransformer(task.vocab_size, task.seq_len, mixer=cfg.mixer, mixer_kwargs=cfg.mixer_kwargs,
                           d_model=r["d_model"], n_layers=r["n_layers"], n_heads=r["n_heads"], d_mlp=r["d_mlp"],
                           activation=r["activation"], norm=r["norm"],
                           phase_embedding=task.p if cfg.phase_embedding else 0, n_classes=task.n_classes)


def scored(model: WaveTransformer, task, x, y, pad, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-target cross-entropy, per-target correct) over the positions / sequences the task scores.

    ``forward``: what runs the blocks (the DDP wrapper of ``model`` when several processes train it).
    """
    forward = forward or model
    if task.kind == "classify":
        logits, target = model.classify(forward(x, pad), pad), y
    else:
        keep = y != IGNORE  # (B, T): only scored positions go through the last MLP and the read-out
        logits, target = model.logits(forward(x, pad, keep=keep)), y[keep]
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return ce, logits.argmax(-1) == target


@torch.no_grad()
def evaluate(model, task, sets: dict, device: str, batch_rows: int = 512) -> dict:
    model.eval()
    out = {}
    for split, (x, y, pad) in sets.items():
        ce_sum, correct, n = 0.0, 0, 0
        for i in range(0, len(x), batch_rows):
            ce, ok = scored(model, task, x[i: i + batch_rows].to(device), y[i: i + batch_rows].to(device),
                            None if pad is None else pad[i: i + batch_rows].to(device))
            ce_sum, correct, n = ce_sum + ce.double().sum().item(), correct + ok.sum().item(), n + ce.numel()
        out[f"{split}_loss"], out[f"{split}_acc"], out[f"{split}_targets"] = ce_sum / n, correct / n, n
        if task.name == "charlm":
            out[f"{split}_bpc"] = out[f"{split}_loss"] / math.log(2)
    model.train()
    return out


def step_marks(rows: list[dict], threshold: float) -> tuple[int | None, int | None]:
    """(memorization_step, grok_step) from evaluation rows in step order; see the module docstring."""
    memorized = next((r["step"] for r in rows if r["train_acc"] >= threshold), None)
    grok = None
    for r in rows:
        grok = (grok or r["step"]) if r["test_acc"] >= threshold else None
    return memorized, grok


def train_seed(cfg: LabConfig, seed: int, out_dir: str) -> dict | None:
    """Train one seed; under a multi-process launcher every process trains its share of each batch's rows
    (DDP through accelerate) and the main process writes. Returns the summary (None on other processes)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from torch.utils.tensorboard import SummaryWriter

    r = resolve(cfg)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise WavedistillError(f"--device {cfg.device} asked for, but CUDA is not available; pass --device cpu")
    AcceleratorState._reset_state()  # seeds of a sweep run one after another in one process
    acc = Accelerator(cpu=cfg.device == "cpu")
    device, main = acc.device, acc.is_main_process
    torch.manual_seed(seed)
    task = build_task(cfg.task, seed, **cfg.task_kwargs)
    net = build_model(cfg, task).to(device)
    n_params = sum(p.numel() for p in net.parameters())
    mixer_params = sum(p.numel() for b in net.blocks for p in b.mixer.parameters())
    optimizer = torch.optim.AdamW(param_groups(net.parameters(), r["weight_decay"]), lr=r["lr"],
                                  betas=(r["beta1"], r["beta2"]))
    warmup = max(1, r["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    wrapped, optimizer = acc.prepare(net, optimizer)
    sets = task.eval_sets()

    if main:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            yaml.safe_dump({**r, "seed": seed, "wavedistill_version": __version__, "task_info": task.describe(),
                            "num_processes": acc.num_processes}, f, sort_keys=False)
        writer = SummaryWriter(out_dir)
        log = open(os.path.join(out_dir, "train_log.jsonl"), "w")
    threshold, rows = r["grok_threshold"], []
    train_s, step = 0.0, 0
    for step in range(1, r["steps"] + 1):
        x, y, pad = task.train_batch(step, r["batch_size"])
        share = len(x) // acc.num_processes  # every process draws the whole batch and trains its own rows
        if share * acc.num_processes != len(x):
            raise WavedistillError(f"a batch of {len(x)} rows does not split over {acc.num_processes} processes")
        part = slice(acc.process_index * share, (acc.process_index + 1) * share)
        t0 = time.perf_counter()
        ce, correct = scored(net, task, x[part].to(device), y[part].to(device),
                             None if pad is None else pad[part].to(device), forward=wrapped)
        loss = ce.mean()
        batch = acc.reduce(torch.stack([loss.detach(), correct.float().mean()]), reduction="mean").tolist()
        if not math.isfinite(batch[0]):
            raise TrainingError(f"loss became {batch[0]} at step {step} (seed {seed}); lower --lr (now {r['lr']})")
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if r["grad_clip"] > 0:
            acc.clip_grad_norm_(net.parameters(), r["grad_clip"])
        optimizer.step()
        scheduler.step()
        train_s += time.perf_counter() - t0
        if main:
            writer.add_scalar("train/batch_loss", batch[0], step)
            writer.add_scalar("train/batch_acc", batch[1], step)
        if step % r["eval_every"] and step not in (1, r["steps"]):
            continue
        rows.append({"step": step, "train_batch_loss": batch[0], **evaluate(net, task, sets, device),
                     "steps_per_s": step / train_s})
        if main:
            log.write(json.dumps(rows[-1]) + "\n")
            log.flush()
            for k, v in rows[-1].items():
                if k != "step" and not k.endswith("_targets"):
                    writer.add_scalar(k.replace("_", "/", 1), v, step)
        grok = step_marks(rows, threshold)[1]
        if cfg.stop_after_grok and grok is not None and step - grok >= cfg.stop_after_grok:
            break
    memorized, grok = step_marks(rows, threshold)
    last = rows[-1]
    summary = {"seed": seed, "grok_step": grok, "memorization_step": memorized, "steps_run": step,
               "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"],
               "final_test_loss": last["test_loss"], "test_targets": last["test_targets"],
               "steps_per_s": round(step / train_s, 2), "params": n_params, "mixer_params": mixer_params}
    if "test_bpc" in last:
        summary["final_test_bpc"] = last["test_bpc"]
    if main:
        writer.close()
        log.close()
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  os.path.join(out_dir, "model.safetensors"))
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    acc.wait_for_everyone()  # the other processes read these files next (the sweep's summary)
    return summary
