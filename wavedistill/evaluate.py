"""Held-out teacher / student comparison over every position, and side-by-side generations.

Metrics (all on held-out windows, teacher-forced, every position counted):
* top1_agreement: argmax of student == argmax of teacher.
* top5_overlap: |top5(teacher) & top5(student)| / 5.
* teacher_top1_in_student_top5.
* kl: mean KL(p_teacher || p_student) at temperature 1, nats per position.
* ppl_teacher / ppl_student / ppl_no_mixing: exp(mean next-token cross-entropy); "no mixing" is the
  teacher with every attention output zeroed (each token sees only itself), the floor a mixer must beat.
* gap_closed = (ppl_no_mixing - ppl_student) / (ppl_no_mixing - ppl_teacher): 1 = teacher, 0 = no mixing.
* no_mixing_top5_overlap / no_mixing_kl: the same agreement numbers for the no-mixing baseline.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn
from tqdm import tqdm

from .errors import WavedistillError
from .kd.losses import kl_teacher_student
from .surgery import decoder_layers


@contextlib.contextmanager
def attention_zeroed(model: nn.Module, layers=None):
    """Temporarily replace the self-attention output of ``layers`` (default: every layer) with zeros;
    all layers zeroed is the no-mixing baseline."""
    def zero(module, args, kwargs, output):
        return (torch.zeros_like(output[0]), *output[1:])

    blocks = decoder_layers(model)
    handles = [blocks[i].self_attn.register_forward_hook(zero, with_kwargs=True)
               for i in (range(len(blocks)) if layers is None else layers)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


SCORE_ELEMENTS = 1 << 26  # logit values per scoring forward (256 MB in float32): one 512-token window at 151,936
SCORE_CHUNK = 1 << 24  # float32 values per metric chunk (64 MB): the positions scored at once


@torch.no_grad()
def compare(teacher: nn.Module, student: nn.Module, windows: torch.Tensor, batch_size: int = 8,
            device: str = "cpu", with_baseline: bool = True, vocab: int | None = None, desc: str | None = None) -> dict:
    """Agreement, KL and perplexities of student vs teacher on (N, T) held-out token windows.

    ``vocab``: score only the first ``vocab`` logit rows, those teacher and student share (a separate student
    whose vocabulary is padded differently, checked by :func:`wavedistill.training.student.shared_vocab`); otherwise
    both must have the same number of rows. ``desc``: show a progress bar with this label.

    Memory: at most ``batch_size`` windows and at most SCORE_ELEMENTS logit values per forward, and the
    metrics over chunks of positions, so that no float32 (B, T, V) copy, log-softmax or probability tensor
    exists: at a 151,936-token vocabulary one 512-token window's logits are 311 MB per model.
    """
    sums = dict(top1=0.0, top5=0.0, t1_in_s5=0.0, kl=0.0, ce_t=0.0, ce_s=0.0, ce_none=0.0, top5_none=0.0, kl_none=0.0)
    positions = targets = 0
    rows = 1  # the first forward learns the vocabulary size, which sets how many windows later ones take
    bar = tqdm(total=len(windows), desc=desc, disable=desc is None, leave=False)
    while positions < windows.numel():
        i = positions // windows.shape[1]
        ids = windows[i: i + rows].to(device)
        t = teacher(ids, use_cache=False).logits[..., :vocab]
        s = student(ids, use_cache=False).logits[..., :vocab]
        if t.shape != s.shape:
            raise WavedistillError(f"teacher and student logits have {t.shape[-1]:,} and {s.shape[-1]:,} rows; "
                                   "compare them over their shared vocabulary (vocab=...)")
        nxt = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1).flatten()  # (B T,); -100: no target
        part, t5 = _agreement_sums(t, s, nxt)
        for key, value in part.items():
            sums[key] += value
        del s
        if with_baseline:
            with attention_zeroed(teacher):
                n = teacher(ids, use_cache=False).logits[..., :vocab]
            part, _ = _agreement_sums(t, n, nxt, t5)
            for mine, theirs in (("top5_none", "top5"), ("kl_none", "kl"), ("ce_none", "ce_s")):
                sums[mine] += part[theirs]
            del n
        positions += ids.numel()
        targets += ids.shape[0] * (ids.shape[1] - 1)
        bar.update(ids.shape[0])
        rows = max(1, min(batch_size, SCORE_ELEMENTS // (ids.shape[1] * t.shape[-1])))
    bar.close()
    m = {
        "positions": positions,
        "target_tokens": targets,
        "top1_agreement": sums["top1"] / positions,
        "top5_overlap": sums["top5"] / positions,
        "teacher_top1_in_student_top5": sums["t1_in_s5"] / positions,
        "kl": sums["kl"] / positions,
        "ppl_teacher": math.exp(sums["ce_t"] / targets),
        "ppl_student": math.exp(sums["ce_s"] / targets),
    }
    if with_baseline:
        m["ppl_no_mixing"] = math.exp(sums["ce_none"] / targets)
        span = m["ppl_no_mixing"] - m["ppl_teacher"]
        m["gap_closed"] = (m["ppl_no_mixing"] - m["ppl_student"]) / span if span > 0 else float("nan")
        m["no_mixing_top5_overlap"] = sums["top5_none"] / positions
        m["no_mixing_kl"] = sums["kl_none"] / positions
    return m


def _agreement_sums(t: torch.Tensor, s: torch.Tensor, nxt: torch.Tensor,
                    t5: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """One batch's sums over positions of top1 / top5 / t1_in_s5 agreement, KL and the student's cross-entropy
    ``ce_s``, and the teacher's ``ce_t`` unless its top-5 indices ``t5`` (B T, 5) are passed (a second student
    against the same teacher). t, s: (B, T, V) logits in any dtype, nxt: (B T,) next tokens, -100 = none.
    Computed a chunk of SCORE_CHUNK values at a time; returns the sums and the teacher's top-5 indices."""
    t, s = t.flatten(0, 1), s.flatten(0, 1)  # (B T, V)
    step = max(1, SCORE_CHUNK // t.shape[-1])
    sums = dict.fromkeys(("top1", "top5", "t1_in_s5", "kl", "ce_s") + (("ce_t",) if t5 is None else ()), 0.0)
    t5_all = []
    for i in range(0, t.shape[0], step):
        tc, sc, y = t[i: i + step].float(), s[i: i + step].float(), nxt[i: i + step]
        tk = tc.topk(5, dim=-1).indices if t5 is None else t5[i: i + step]  # (c, 5)
        sk = sc.topk(5, dim=-1).indices
        t5_all.append(tk)
        sums["top1"] += (tk[:, 0] == sk[:, 0]).sum().item()
        sums["top5"] += top5_overlap_sum(tk, sk)
        sums["t1_in_s5"] += (sk == tk[:, :1]).any(-1).sum().item()
        sums["kl"] += kl_teacher_student(tc, sc).double().sum().item()
        sums["ce_s"] += F.cross_entropy(sc, y, ignore_index=-100, reduction="none").double().sum().item()
        if t5 is None:
            sums["ce_t"] += F.cross_entropy(tc, y, ignore_index=-100, reduction="none").double().sum().item()
    return sums, (torch.cat(t5_all) if t5 is None else t5)


def top5_overlap_sum(t5: torch.Tensor, s5: torch.Tensor) -> float:
    """Sum over positions of |top5_T & top5_S| / 5; t5, s5: (..., 5) indices."""
    return (t5[..., :, None] == s5[..., None, :]).any(-1).sum().item() / 5


@torch.no_grad()
def side_by_side(teacher: nn.Module, student: nn.Module, tokenizer, prompts: list[list[int]],
                 max_new_tokens: int = 48, device: str = "cpu") -> list[dict]:
    """Greedy continuations of each prompt by teacher and student, with per-sample token agreement and the
    wall time of each ``generate`` call (batch 1, cached decoding)."""

    rows = []
    for ids in tqdm(prompts, desc="side-by-side generations", leave=False):
        x = torch.tensor([ids], device=device)
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                  if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        t0 = time.perf_counter()
        gt = teacher.generate(x, **kw)[0, len(ids):].tolist()
        t1 = time.perf_counter()
        gs = student.generate(x, **kw)[0, len(ids):].tolist()
        t2 = time.perf_counter()
        n = max(len(gt), len(gs))
        agree = sum(a == b for a, b in zip(gt, gs)) / n if n else 1.0
        rows.append({"prompt": tokenizer.decode(ids, skip_special_tokens=True),
                     "teacher": tokenizer.decode(gt, skip_special_tokens=True),
                     "student": tokenizer.decode(gs, skip_special_tokens=True),
                     "token_agreement": agree, "teacher_tokens": len(gt), "teacher_s": t1 - t0,
                     "student_tokens": len(gs), "student_s": t2 - t1})
    return rows


def window_prompts(stream: torch.Tensor, seq_len: int, n: int, prompt_len: int = 8) -> list[list[int]]:
    """The first ``prompt_len`` tokens of each of the first ``n`` full windows of a token stream."""
    n = min(n, len(stream) // seq_len)
    return [stream[i * seq_len: i * seq_len + prompt_len].tolist() for i in range(n)]


def evaluate_student(teacher: nn.Module, student: nn.Module, tokenizer, windows: torch.Tensor,
                     prompts: list[list[int]], device: str = "cpu", batch_size: int = 8,
                     vocab: int | None = None) -> tuple[dict, list[dict]]:
    """:func:`compare` on held-out windows plus side-by-side generations; (metrics, generation rows)."""
    metrics = compare(teacher, student, windows, batch_size=batch_size, device=device, vocab=vocab,
                      desc=f"scoring {len(windows)} held-out windows")
    rows = side_by_side(teacher, student, tokenizer, prompts, device=device)
    metrics["generation_token_agreement"] = sum(r["token_agreement"] for r in rows) / max(len(rows), 1)
    for who in ("teacher", "student"):
        seconds = sum(r[f"{who}_s"] for r in rows)
        metrics[f"generate_tokens_per_s_{who}"] = sum(r[f"{who}_tokens"] for r in rows) / seconds if seconds else None
    return metrics, rows


def write_evaluation(directory: str, metrics: dict, rows: list[dict], prefix: str = "") -> None:
    """``{prefix}metrics.json`` and ``{prefix}samples.md`` in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{prefix}metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(directory, f"{prefix}samples.md"), "w") as f:
        f.write(samples_markdown(rows))


def samples_markdown(rows: list[dict]) -> str:
    out = ["# Side-by-side greedy generations (held-out prompts)\n"]
    for i, r in enumerate(rows):
        out += [f"## Sample {i + 1} — token agreement {r['token_agreement']:.2f}\n", f"**Prompt:** {r['prompt']}\n",
                f"**Teacher:** {r['teacher']}\n", f"**Student:** {r['student']}\n"]
    return "\n".join(out)


METRIC_ROWS = [("positions", "{:d}"), ("top1_agreement", "{:.4f}"), ("top5_overlap", "{:.4f}"),
               ("teacher_top1_in_student_top5", "{:.4f}"), ("kl", "{:.4f}"), ("ppl_teacher", "{:.3f}"),
               ("ppl_student", "{:.3f}"), ("ppl_no_mixing", "{:.3f}"), ("gap_closed", "{:.4f}"),
               ("no_mixing_top5_overlap", "{:.4f}"), ("no_mixing_kl", "{:.4f}")]


def print_metrics(metrics: dict, title: str = "held-out metrics") -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, fmt in METRIC_ROWS:
        if key in metrics:
            table.add_row(key, fmt.format(metrics[key]))
    Console().print(table)
