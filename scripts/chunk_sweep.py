"""Chunk lengths of one mixer against each other, forward + backward, interleaved in one process (each round times
every setting once, so a slow spell of the machine hits all of them alike).

usage: python scripts/chunk_sweep.py --mixer gated_delta_net [--chunks 32,64] [--lengths 2048,8192,16384]
       [--d-model 256] [--batch-size 1] [--repeats 5] [--kwargs '{"n_heads": 8, "n_kv_heads": 4, "head_dim": 8}']
Prints per length and chunk: the median and min-max ms of --repeats rounds after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from wavedistill.mixers import build_mixer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mixer", required=True)
    p.add_argument("--chunks", default="32,64")
    p.add_argument("--lengths", default="2048,8192,16384")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kwargs", type=json.loads, default={}, help="JSON settings of the mixer besides chunk")
    args = p.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    for T in (int(t) for t in args.lengths.split(",")):
        torch.manual_seed(0)
        x = torch.randn(args.batch_size, T, args.d_model, requires_grad=True)
        mixers = {C: build_mixer(args.mixer, args.d_model, chunk=C, **args.kwargs) for C in chunks}
        times = {C: [] for C in chunks}
        for rnd in range(args.repeats + 1):  # round 0 warms up
            for C, m in mixers.items():
                t0 = time.perf_counter()
                m(x).square().mean().backward()
                if rnd:
                    times[C].append((time.perf_counter() - t0) * 1000)
        cells = ", ".join(f"chunk {C}: {statistics.median(v):.1f} ms ({min(v):.1f}-{max(v):.1f})" for C, v in times.items())
        print(f"{args.mixer} T={T} (batch {args.batch_size}): {cells}, median of {args.repeats}", flush=True)


if __name__ == "__main__":
    main()
