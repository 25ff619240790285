"""Where a mixer's time goes: forward and backward separately, per op (torch.profiler), one layer as `wavedistill bench`
builds it (d_model 256, batch 1, CPU), beside softmax attention at the same length, in the same process.

usage: python scripts/profile_mixers.py [--mixers rotary_gla,gated_delta_net] [--lengths 512,8192,16384] [--top 8]
       [--kwargs '{"window": 16}']   (settings of the mixers other than attention: e.g. the window-16 hybrid)
Prints, per mixer and length: forward and backward wall time (median of --repeats after a warm-up) and the ops
that take most of each (self CPU time, summed over calls, with the number of calls).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from wavedistill.mixers import build_mixer


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def top_ops(fn, n: int) -> list[tuple[str, float, int]]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]
    return [(e.key, e.self_cpu_time_total / 1000, e.count) for e in rows]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mixers", default="rotary_gla,gated_delta_net")
    p.add_argument("--lengths", default="512,8192,16384")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--kwargs", type=json.loads, default={}, help="JSON settings for the mixers (not attention)")
    args = p.parse_args()
    for T in (int(t) for t in args.lengths.split(",")):
        for name in ["attention", *args.mixers.split(",")]:
            torch.manual_seed(0)
            m = build_mixer(name, args.d_model, **({} if name == "attention" else args.kwargs))
            x = torch.randn(1, T, args.d_model, requires_grad=True)

            def fwd():
                return m(x)

            def fwd_nograd():
                with torch.no_grad():
                    m(x)

            y = fwd()
            grad = torch.randn_like(y)

            def bwd():
                out = fwd()
                t0 = time.perf_counter()
                out.backward(grad)
                return (time.perf_counter() - t0) * 1000

            f = timed(fwd_nograd, args.repeats)
            bwd()
            b = [bwd() for _ in range(args.repeats)]
            print(f"\n## {name} T={T}: forward {statistics.median(f):.1f} ms ({min(f):.1f}-{max(f):.1f}), "
                  f"backward {statistics.median(b):.1f} ms ({min(b):.1f}-{max(b):.1f}), median of {args.repeats}")
            if name == "attention":
                continue
            for label, fn in (("forward", fwd_nograd), ("forward+backward", lambda: fwd().backward(grad))):
                ops = top_ops(fn, args.top)
                print(f"{label}: " + "; ".join(f"{k} {ms:.1f} ms x{c}" for k, ms, c in ops))


if __name__ == "__main__":
    main()
