"""Where a teacher's softmax puts its mass, per layer (issue 20): on the first S real tokens of a window (attention
sinks), on the last W keys (a sliding band), and on the keys in neither — what a bounded exact cache of W + S tokens
misses and a linear state must carry; and, for comparison, on BOS tokens outside the band (a window cut from the
token stream starts mid-document, so its first tokens are rarely a BOS). Mean over heads and query positions
t >= W + S of held-out val windows.

usage: python scripts/attention_mass.py [--teacher T] [--data F] [--seq-len 256] [--window 16] [--sinks 4]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from wavedistill.data import eval_windows, run_splits  # noqa: E402
from wavedistill.io import load_teacher  # noqa: E402
from wavedistill.kd.attention_maps import eager_attention  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", default="../shared/teachers/stories260K")
    p.add_argument("--data", default="../shared/corpora/tinystories/stories.txt")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--sinks", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tok = load_teacher(args.teacher)
    windows = eval_windows(run_splits(args.data, tok).val, args.seq_len)  # (N, T), the runs' val split
    W, S, T = args.window, args.sinks, args.seq_len
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    band = (lag >= 0) & (lag < W)
    sink = torch.zeros(T, T, dtype=torch.bool)
    sink[:, :S] = lag[:, :S] >= W  # sinks outside the band
    sums = None
    with eager_attention(model), torch.no_grad():
        for batch in windows.split(8):
            maps = model(batch, output_attentions=True).attentions  # per layer (B, H, T, T)
            rows = [m[:, :, W + S:] for m in maps]  # queries that have both a full band and sinks behind it
            bos = (batch == tok.bos_token_id)[:, None, None, :] & ~band[W + S:]  # (B, 1, T - W - S, T)
            parts = torch.stack([torch.stack([(r * sink[W + S:]).sum(-1).sum((0, 2)), (r * band[W + S:]).sum(-1).sum((0, 2)),
                                              (r * bos).sum(-1).sum((0, 2))]) for r in rows])  # (L, 3, H)
            n = rows[0].shape[0] * rows[0].shape[2]
            sums = (parts, n) if sums is None else (sums[0] + parts, sums[1] + n)
    mass = sums[0] / sums[1]  # (L, 3, H): mean mass per query
    print(f"{len(windows)} val windows of {T} tokens, queries t >= {W + S}; mean over heads [min, max over heads]\n")
    print(f"| layer | first {S} tokens (sinks) | last {W} keys (band) | the rest | BOS tokens outside the band |\n"
          "|---:|---:|---:|---:|---:|")
    for i, (s_, b_, o_) in enumerate(mass):
        rest = 1 - s_ - b_
        print(" | ".join([f"| {i}", *(f"{v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]" for v in (s_, b_, rest, o_))]) + " |")


if __name__ == "__main__":
    main()
