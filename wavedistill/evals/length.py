"""Context beyond the training length: perplexity and KL by position, and decode time, at growing windows.

A student is distilled on windows of ``seq_len`` tokens; users run it on longer ones. For windows of
1x, 2x and 4x the training length, the teacher's own context and twice that (by default), every held-out
window of that length is scored and each position's next-token loss falls in a bucket of positions
(1-64, 65-128, 129-256, ...; position p is the prediction made from the window's first p tokens): per bucket the perplexity of teacher, no-mixing baseline and student, and
the student's KL to the teacher where the teacher is inside its trained context (past it, RoPE attention
is off its training range: its perplexity there is reported, not used as a reference). Standard errors
of the mean losses treat windows as clusters. Decode time: milliseconds per generated token after a
prompt of each length, median of ``decode_tokens`` single-token steps through the model's cache.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..data import eval_windows
from ..errors import WavedistillError
from ..kd.losses import kl_teacher_student
from .scoring import as_model, logits
from .stats import estimate, ratio_se


def default_lengths(seq_len: int, context: int | None) -> list[int]:
    """1x, 2x, 4x the training length, the teacher's context and twice it."""
    extra = [context, 2 * context] if context else []
    return sorted({seq_len, 2 * seq_len, 4 * seq_len, *extra})


def buckets(length: int) -> list[tuple[int, int]]:
    """Position buckets (1-based, inclusive) covering 1..length-1: 1-64, 65-128, 129-256, ... doubling."""
    edges, hi = [(1, 64)], 64
    while hi < length - 1:
        edges.append((hi + 1, 2 * hi))
        hi *= 2
    return [(lo, min(hi, length - 1)) for lo, hi in edges if lo <= length - 1]


@torch.no_grad()
def position_profile(models, stream: torch.Tensor, names, lengths: list[int], context: int | None,
                     max_windows: int = 0, batch_size: int = 4) -> dict:
    """Per window length and position bucket: perplexity of each model, the student's KL to the teacher."""
    out = {"teacher_context": context, "lengths": {}}
    for L in lengths:
        if L < 2:
            raise WavedistillError(f"a window of {L} token(s) has no next-token target; pass --lengths of 2 or more")
        windows = eval_windows(stream, L, max_windows)
        if len(windows) == 0:
            raise WavedistillError(f"the held-out text has {len(stream)} tokens, fewer than one window of {L}; "
                                   "pass more text (--data) or shorter --lengths")
        edges = buckets(L)
        ce = {n: [([], []) for _ in edges] for n in names}  # per bucket: per-window sums, counts
        kl = [([], []) for _ in edges]
        for i in range(0, len(windows), batch_size):
            ids = windows[i: i + batch_size]
            z = {n: logits(models, n, ids)[:, :-1] for n in names}  # (B, L - 1, V): position p predicts p + 1
            for n in names:
                _add(ce[n], edges, F.cross_entropy(z[n].transpose(1, 2), ids[:, 1:], reduction="none"))
            if "teacher" in z and "student" in z:
                _add(kl, edges, kl_teacher_student(z["teacher"], z["student"]))
        row = {"windows": len(windows), "buckets": [f"{lo}-{hi}" for lo, hi in edges], "ppl": {}}
        for n in names:
            row["ppl"][n] = [_ppl(*ratio_se(*ce[n][b])) for b in range(len(edges))]
        if "teacher" in names and "student" in names:
            # KL to the teacher only where its positions are inside its trained context.
            row["kl"] = [estimate(*ratio_se(*kl[b])) if context is None or hi <= context else None
                         for b, (lo, hi) in enumerate(edges)]
        out["lengths"][str(L)] = row
    return out


def _add(acc: list, edges: list[tuple[int, int]], values: torch.Tensor) -> None:
    """Add (B, L - 1) per-position values (column p - 1 = position p) to each bucket's per-window sums."""
    for b, (lo, hi) in enumerate(edges):
        chunk = values[:, lo - 1: hi].double()
        acc[b][0].extend(chunk.sum(1).tolist())
        acc[b][1].extend([chunk.shape[1]] * len(chunk))


def _ppl(mean_loss: float, se: float, n: int) -> dict:
    """exp(mean loss), with the loss's standard error (the perplexity's interval is exp(loss ± se))."""
    return estimate(math.exp(mean_loss), se, n, loss=mean_loss)


@torch.no_grad()
def decode_speed(models, stream: torch.Tensor, names, lengths: list[int], decode_tokens: int = 32) -> dict:
    """Milliseconds per greedy token after a prompt of each length (median of ``decode_tokens`` steps after one
    warm-up step), through each model's own cache: attention's keys / values, a wave mixer's state."""

    if decode_tokens < 1:
        raise WavedistillError(f"--decode-tokens must be at least 1, got {decode_tokens}")
    out = {"decode_tokens": decode_tokens, "threads": torch.get_num_threads(), "ms_per_token": {}}
    for n in names:
        out["ms_per_token"][n] = _decode_times(models, n, stream, lengths, decode_tokens)
    return out


def _decode_times(models, name: str, stream: torch.Tensor, lengths: list[int], decode_tokens: int) -> dict:
    row = {}
    with as_model(name, models.student, models.teacher) as model:
        device = next(model.parameters()).device
        for L in lengths:
            if len(stream) < L:
                raise WavedistillError(f"the held-out text has {len(stream)} tokens, fewer than a prompt of {L}")
            cache = DynamicCache(config=model.config)
            out = model(stream[None, :L].to(device), cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            times = []
            for _ in range(decode_tokens + 1):  # the first step is a warm-up
                t0 = time.perf_counter()
                out = model(token, cache=cache, use_cache=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1000)
                token = out.logits[:, -1:].argmax(-1)
            steps = sorted(times[1:])
            row[str(L)] = {"median": steps[len(steps) // 2], "min": steps[0], "max": steps[-1]}
    return row
