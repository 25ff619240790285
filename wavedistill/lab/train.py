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

import dataclasses
import json
import math
import os
import time

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import save_file

from ..core.devices import resolve_device
from ..core.params import param_groups
from ..errors import TrainingError, WavedistillError
from ..kd.features import FeatureProjection
from ..training.layer_map import layer_map
from ..version import __version__
from .config import LabConfig, resolve
from .distill import block_feature_loss, data_seed, load_teacher, output_gap, output_loss
from .model import WaveTransformer, build_model, param_counts
from .tasks import IGNORE, build_task


def predict(model: WaveTransformer, task, x, y, pad, forward=None, hidden: list | None = None):
    """(outputs, targets) at what the task scores: logits (N, V) at the N scored positions, (B, n_classes)
    class logits, or (B, T, out_features) predictions for regression. ``forward``: what runs the blocks (the
    DDP wrapper of ``model`` when several processes train it); ``hidden`` receives block outputs."""
    forward = forward or model
    if task.kind == "classify":
        return model.classify(forward(x, pad, hidden=hidden), pad), y
    if task.kind == "regress":
        return model.logits(forward(x, pad, hidden=hidden)), y
    keep = y != IGNORE  # (B, T): only scored positions go through the last MLP and the read-out
    return model.logits(forward(x, pad, keep=keep, hidden=hidden)), y[keep]


def target_loss(task, out, target) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-target loss, per-target correct): cross-entropy and arg-max match, or for regression the squared
    error averaged over outputs and whether the prediction lies within ``task.tolerance`` (Euclidean)."""
    if task.kind == "regress":
        err = (out.float() - target).pow(2)  # (B, T, F)
        return err.mean(-1).flatten(), err.sum(-1).sqrt().flatten() < task.tolerance
    return F.cross_entropy(out.float(), target, reduction="none"), out.argmax(-1) == target


def scored(model: WaveTransformer, task, x, y, pad, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-target loss, per-target correct) over the positions / sequences the task scores."""
    return target_loss(task, *predict(model, task, x, y, pad, forward))


@torch.no_grad()
def evaluate(model, task, sets: dict, device: str, batch_rows: int = 512, teacher=None) -> dict:
    """Per split: mean loss, accuracy and target count; with ``teacher``, the mean distance to its outputs
    (``mse_vs_teacher`` for regression, ``kl_vs_teacher`` in nats otherwise)."""
    model.eval()
    out = {}
    gap_name = "mse_vs_teacher" if task.kind == "regress" else "kl_vs_teacher"
    for split, (x, y, pad) in sets.items():
        loss_sum, gap_sum, correct, n = 0.0, 0.0, 0, 0
        for i in range(0, len(x), batch_rows):
            rows = (x[i: i + batch_rows].to(device), y[i: i + batch_rows].to(device),
                    None if pad is None else pad[i: i + batch_rows].to(device))
            pred, target = predict(model, task, *rows)
            loss, ok = target_loss(task, pred, target)
            loss_sum, correct, n = loss_sum + loss.double().sum().item(), correct + ok.sum().item(), n + loss.numel()
            if teacher is not None:
                gap_sum += output_gap(task.kind, pred, predict(teacher, task, *rows)[0]).double().sum().item()
        out[f"{split}_loss"], out[f"{split}_acc"], out[f"{split}_targets"] = loss_sum / n, correct / n, n
        if teacher is not None:
            out[f"{split}_{gap_name}"] = gap_sum / n
        out.update(task.extra_metrics(split, out[f"{split}_loss"]))
    model.train()
    return out


@torch.no_grad()
def inference_tokens_per_s(model, task, device: str, batch_rows: int = 256) -> float:
    """Positions per second of one pass of the model over the test inputs, in eval mode, after a warm-up batch."""
    model.eval()
    x, pad = task.test_x, task.test_pad
    model(x[:batch_rows].to(device), None if pad is None else pad[:batch_rows].to(device))
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_rows):
        model(x[i: i + batch_rows].to(device), None if pad is None else pad[i: i + batch_rows].to(device))
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    model.train()
    return len(x) * x.shape[1] / (time.perf_counter() - t0)


def step_marks(rows: list[dict], threshold: float) -> tuple[int | None, int | None]:
    """(memorization_step, grok_step) from evaluation rows in step order; see the module docstring."""
    memorized = next((r["step"] for r in rows if r["train_acc"] >= threshold), None)
    grok = None
    for r in rows:
        grok = (grok or r["step"]) if r["test_acc"] >= threshold else None
    return memorized, grok


def loss_terms(cfg: LabConfig, r: LabConfig, net, forward, task, rows: tuple, teacher, matched: list[int], projection):
    """The unweighted loss terms of one batch (``task``; ``output`` and ``feature`` against a teacher, when their
    weights are on) and the per-target correctness of the student's predictions."""
    hidden = [] if r.hidden_weight > 0 else None
    out, target = predict(net, task, *rows, forward=forward, hidden=hidden)
    task_loss, correct = target_loss(task, out, target)
    terms = {"task": task_loss.mean()}
    if r.output_weight > 0 or r.hidden_weight > 0:
        t_hidden = [] if r.hidden_weight > 0 else None
        with torch.no_grad():
            t_out, _ = predict(teacher, task, *rows, hidden=t_hidden)
        if r.output_weight > 0:
            terms["output"] = output_loss(task.kind, out, t_out, cfg.temperature)
        if r.hidden_weight > 0:
            terms["feature"] = block_feature_loss(hidden, [t_hidden[j] for j in matched], projection, cfg.feature_loss)
    return terms, correct


def seed_summary(cfg: LabConfig, r: LabConfig, seed: int, rows: list[dict], step: int, train_s: float,
                 train_positions: int, net, task, device) -> dict:
    """summary.json of one seed: when it memorised and generalised, its final metrics, speed and size."""
    memorized, grok = step_marks(rows, r.grok_threshold)
    last = rows[-1]
    summary = {"seed": seed, "grok_step": grok, "memorization_step": memorized, "steps_run": step,
               "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"],
               "final_test_loss": last["test_loss"], "test_targets": last["test_targets"],
               "steps_per_s": round(step / train_s, 2), "train_tokens_per_s": round(train_positions / train_s),
               "infer_tokens_per_s": round(inference_tokens_per_s(net, task, device)),
               "params": sum(p.numel() for p in net.parameters()),
               "non_embedding_params": param_counts(net)["non_embedding"], "d_mlp": net.blocks[0].mlp[0].out_features,
               "mixer_params": sum(p.numel() for b in net.blocks for p in b.mixer.parameters()),
               "train_tokens": train_positions,
               "teacher": cfg.teacher,
               "loss_weights": {"task": r.task_weight, "output": r.output_weight, "hidden": r.hidden_weight}}
    for k in ("test_bpc", "test_ppl", "val_loss", "val_ppl", "test_mse_vs_teacher", "test_kl_vs_teacher"):
        if k in last:
            summary[f"final_{k}"] = last[k]
    return summary


def log_batch(writer, step: int, batch: list[float], grad_norm: float, terms: dict) -> None:
    """TensorBoard scalars of one update: the task loss and accuracy (mean over processes), the gradient norm
    before clipping, and each weighted term with the total when there are several."""
    writer.add_scalar("train/batch_loss", batch[0], step)
    writer.add_scalar("train/batch_acc", batch[1], step)
    writer.add_scalar("train/grad_norm", grad_norm, step)
    if len(terms) > 1:
        writer.add_scalar("train/batch_total_loss", batch[2], step)
        for k, v in terms.items():
            writer.add_scalar(f"train/batch_{k}_loss", v.item(), step)


def open_seed_logs(out_dir: str, settings: dict):
    """(TensorBoard writer, train_log.jsonl) of a seed folder, after its config.yaml records ``settings``."""
    from torch.utils.tensorboard import SummaryWriter  # lazy: TensorBoard's protobuf stack, only for a training seed

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(settings, f, sort_keys=False)
    return SummaryWriter(out_dir), open(os.path.join(out_dir, "train_log.jsonl"), "w")


def train_seed(cfg: LabConfig, seed: int, out_dir: str) -> dict | None:
    """Train one seed; under a multi-process launcher every process trains its share of each batch's rows
    (DDP through accelerate) and the main process writes. Returns the summary (None on other processes)."""
    r = resolve(cfg)
    resolve_device(cfg.device)
    AcceleratorState._reset_state()  # seeds of a sweep run one after another in one process
    acc = Accelerator(cpu=cfg.device == "cpu")
    device, main = acc.device, acc.is_main_process
    torch.manual_seed(seed)
    task_seed = data_seed(cfg, seed)
    task = build_task(cfg.task, task_seed, **cfg.task_kwargs)
    task.order_seed = seed  # the run seed draws the batches, whatever seed drew the data
    net = build_model(cfg, task).to(device)
    teacher = load_teacher(cfg, task, device) if cfg.teacher else None
    task_w, output_w, hidden_w = r.task_weight, r.output_weight, r.hidden_weight
    projection, matched = None, []
    if hidden_w > 0:
        matched = layer_map(cfg.layer_map, len(teacher.blocks), len(net.blocks))
        projection = FeatureProjection(r.d_model, teacher.d_model, len(net.blocks)).to(device)
        if len(projection.maps) and acc.num_processes > 1:
            raise WavedistillError("feature distillation between widths runs in one process (its projections are "
                                   "not part of the DDP model); run without a launcher or with --hidden-weight 0")
    trained = [*net.parameters(), *(projection.parameters() if projection is not None else [])]
    optimizer = torch.optim.AdamW(param_groups(trained, r.weight_decay), lr=r.lr,
                                  betas=(r.beta1, r.beta2))
    warmup = max(1, r.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    wrapped, optimizer = acc.prepare(net, optimizer)
    sets = task.eval_sets()

    if main:
        writer, log = open_seed_logs(out_dir, {**dataclasses.asdict(r), "seed": seed, "task_data_seed": task_seed,
                                               "wavedistill_version": __version__, "task_info": task.describe(),
                                               "num_processes": acc.num_processes,
                                               **({"layer_map_used": matched} if matched else {})})
    threshold, rows = r.grok_threshold, []
    train_s, train_positions, step = 0.0, 0, 0
    for step in range(1, r.steps + 1):
        x, y, pad = task.train_batch(step, r.batch_size)
        share = len(x) // acc.num_processes  # every process draws the whole batch and trains its own rows
        if share * acc.num_processes != len(x):
            raise WavedistillError(f"a batch of {len(x)} rows does not split over {acc.num_processes} processes")
        part = slice(acc.process_index * share, (acc.process_index + 1) * share)
        t0 = time.perf_counter()
        rows_here = (x[part].to(device), y[part].to(device), None if pad is None else pad[part].to(device))
        terms, correct = loss_terms(cfg, r, net, wrapped, task, rows_here, teacher, matched, projection)
        weights = {"task": task_w, "output": output_w, "feature": hidden_w}
        loss = sum(weights[k] * v for k, v in terms.items())
        logged = torch.stack([terms["task"].detach(), correct.float().mean(), loss.detach()])
        batch = acc.reduce(logged, reduction="mean").tolist()
        if not math.isfinite(batch[2]):
            raise TrainingError(f"loss became {batch[2]} at step {step} (seed {seed}); lower --lr (now {r.lr})")
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        # The norm before clipping (clip_grad_norm_ with an infinite bound only measures it).
        grad_norm = acc.clip_grad_norm_(trained, r.grad_clip if r.grad_clip > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        train_s += time.perf_counter() - t0
        train_positions += len(x) * x.shape[1]
        if main:
            log_batch(writer, step, batch, float(grad_norm), terms)
        if step % r.eval_every and step not in (1, r.steps):
            continue
        rows.append({"step": step, "train_tokens": train_positions, "train_batch_loss": batch[0],
                     **evaluate(net, task, sets, device, teacher=teacher),
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
    summary = seed_summary(cfg, r, seed, rows, step, train_s, train_positions, net, task, device)
    if main:
        writer.close()
        log.close()
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  os.path.join(out_dir, "model.safetensors"))
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    acc.wait_for_everyone()  # the other processes read these files next (the sweep's summary)
    return summary
