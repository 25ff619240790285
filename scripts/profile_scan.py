"""The chunked scan alone (`decayed_linear_attention`), forward and forward + backward, at `rotary_gla`'s bench shape.

usage: python scripts/profile_scan.py [--lengths 8192,16384] [--repeats 5]
Shapes: batch 1, 4 heads, 128 Hedgehog features (2 x head_dim 64), 65 value columns (head_dim + the normaliser's
ones column), chunk 64, as `wavedistill bench` builds rotary_gla at d_model 256. Prints the median and min-max ms.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from profile_mixers import timed  # scripts/ is on the path when this file runs as a script
from wavedistill.mixers.scan import decayed_linear_attention


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="8192,16384")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    for T in (int(t) for t in args.lengths.split(",")):
        q, k = (torch.rand(1, 4, T, 128, requires_grad=True) for _ in range(2))
        v = torch.randn(1, 4, T, 65, requires_grad=True)
        log_decay = (-0.1 * torch.rand(1, 4, T)).requires_grad_()
        fwd = timed(lambda: decayed_linear_attention(q, k, v, log_decay)[0], args.repeats)
        both = timed(lambda: decayed_linear_attention(q, k, v, log_decay)[0].sum().backward(), args.repeats)
        print(f"T={T}: forward {statistics.median(fwd):.1f} ms ({min(fwd):.1f}-{max(fwd):.1f}), "
              f"forward + backward {statistics.median(both):.1f} ms ({min(both):.1f}-{max(both):.1f}), "
              f"median of {args.repeats}")


if __name__ == "__main__":
    main()
