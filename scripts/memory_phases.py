"""Resident memory of one distillation step at Qwen3-0.6B's real shape, phase by phase (docs/benchmarks.md).

usage: python scripts/memory_phases.py [MODEL_DIR] [--batch-size N] [--grad-checkpointing]
       (MODEL_DIR default runs/real_shape/qwen3_shape, from scripts/real_shape.sh; batch default the recipe's 2)

The pieces a `distill` run of configs/real_shape.yaml executes, in fp32, without the loop around them: load the
base, convert every layer to rotary_gla, a teacher forward, a student forward (graph kept), the chunked KD loss,
backward, an AdamW step, and the held-out scoring. After each phase: the resident size and the high-water mark
reached during the phase (the mark is reset after each print, wavedistill/core/rss.py).
"""

from __future__ import annotations

import argparse

import torch

from wavedistill.core.rss import peak_mb, reset_peak, rss_mb
from wavedistill.evaluate import compare
from wavedistill.io import load_teacher
from wavedistill.kd.chunked import kd_loss_chunked
from wavedistill.surgery import TeacherView
from wavedistill.training.config import load_yaml, make_config
from wavedistill.training.distill import build_student


def mark(name: str) -> None:
    print(f"{name:34s} resident {rss_mb():8,.0f} MB   peak during the phase {peak_mb():8,.0f} MB", flush=True)
    reset_peak()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default="runs/real_shape/qwen3_shape")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-checkpointing", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    changes = {"teacher": args.model, **({"batch_size": args.batch_size} if args.batch_size else {})}
    cfg = make_config({**load_yaml("configs/real_shape.yaml"), **changes})
    reset_peak()
    mark("start")
    base, _ = load_teacher(cfg.teacher, dtype=torch.float32)
    mark("base loaded (fp32)")
    student = build_student(base, cfg)
    if args.grad_checkpointing:  # as distill --grad-checkpointing does
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        student.train()
    mark("mixers added (fp32)")
    teacher = TeacherView(student)
    ids = torch.randint(0, 500, (cfg.batch_size, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = teacher(ids, use_cache=False).logits
    mark("teacher forward")
    s = student(ids, use_cache=False).logits
    mark("student forward (graph kept)")
    loss = kd_loss_chunked(s, t, ids)["loss"]
    mark("KD loss forward")
    loss.backward()
    mark("backward")
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    opt.step()
    mark("AdamW step")
    del s, t, loss
    opt.zero_grad(set_to_none=True)
    student.eval()
    compare(teacher, student, ids, device="cpu", with_baseline=True)
    mark("held-out scoring (with baseline)")


if __name__ == "__main__":
    main()
